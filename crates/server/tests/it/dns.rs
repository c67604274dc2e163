//! The built-in DNS server, queried with a real DNS client (hickory's) over UDP and TCP.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use flotilla_server::dns::{self, DnsZone};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::{DnsResponse, ResponseCode};
use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DOMAIN: &str = "flotilla.internal";
const NODE: &str = "0f6c5e4a-1b2c-4d3e-8f90-0123456789ab";

struct Server {
    zone: Arc<DnsZone>,
    udp: SocketAddr,
    tcp: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start() -> Server {
        let zone = Arc::new(DnsZone::new(DOMAIN).expect("valid domain"));
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind TCP");
        let (udp_addr, tcp_addr) = (
            udp.local_addr().expect("UDP address"),
            tcp.local_addr().expect("TCP address"),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dns::serve(zone.clone(), udp, tcp, async {
            let _ = stopped.await;
        }));
        Server {
            zone,
            udp: udp_addr,
            tcp: tcp_addr,
            stop: Some(stop),
            task,
        }
    }

    async fn udp_client(&self) -> Client<TokioRuntimeProvider> {
        let stream = UdpClientStream::builder(self.udp, TokioRuntimeProvider::default()).build();
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(background);
        client
    }

    async fn tcp_client(&self) -> Client<TokioRuntimeProvider> {
        let (connect, handle) =
            TcpClientStream::new(self.tcp, None, None, TokioRuntimeProvider::default());
        let stream = connect.await.expect("TCP connection to the DNS server");
        let (client, background) = Client::<TokioRuntimeProvider>::new(stream, handle);
        tokio::spawn(background);
        client
    }

    /// One client of each transport.
    async fn clients(&self) -> Vec<(&'static str, Client<TokioRuntimeProvider>)> {
        vec![
            ("udp", self.udp_client().await),
            ("tcp", self.tcp_client().await),
        ]
    }

    fn set(&self, records: &[(&str, &[Ipv4Addr])]) {
        self.zone.replace(
            records
                .iter()
                .map(|(name, ips)| ((*name).to_owned(), ips.to_vec()))
                .collect(),
        );
    }
}

async fn query(
    client: &mut Client<TokioRuntimeProvider>,
    name: &str,
    kind: RecordType,
) -> DnsResponse {
    client
        .query(
            Name::from_str(name).expect("a DNS name"),
            DNSClass::IN,
            kind,
        )
        .await
        .unwrap_or_else(|e| panic!("query {name} {kind}: {e}"))
}

/// The A records of an answer, in order.
fn a_records(response: &DnsResponse) -> Vec<Ipv4Addr> {
    response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn has_soa_authority(response: &DnsResponse) -> bool {
    response
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA)
}

fn ip(a: u8, b: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, a, b)
}

fn node_name() -> String {
    format!("{NODE}.node.{DOMAIN}")
}

#[tokio::test]
async fn dns_answers_node_and_cluster_records_over_udp_and_tcp() {
    let server = Server::start().await;
    let node = node_name();
    let cluster = server.zone.cluster_fqdn("Web", None);
    assert_eq!(cluster, "web.cluster.flotilla.internal");
    server.set(&[
        (&node, &[ip(0, 7)]),
        // Given unsorted and with a duplicate: answered sorted, once each.
        (&cluster, &[ip(2, 3), ip(0, 7), ip(1, 200), ip(0, 7)]),
    ]);

    for (transport, mut client) in server.clients().await {
        // A node's external_fqdn → its public IP, authoritatively, with a short TTL.
        let response = query(&mut client, &node, RecordType::A).await;
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NoError,
            "{transport}"
        );
        assert!(response.metadata.authoritative, "{transport}: AA bit");
        assert_eq!(a_records(&response), vec![ip(0, 7)], "{transport}");
        assert_eq!(response.answers[0].ttl, dns::TTL, "{transport}");

        // A cluster → every IP, sorted.
        let response = query(&mut client, &cluster, RecordType::A).await;
        assert_eq!(
            a_records(&response),
            vec![ip(0, 7), ip(1, 200), ip(2, 3)],
            "{transport}"
        );

        // Names are case-insensitive (hickory's client lowercases names, so the raw test
        // below sends them as typed).
        let shouted = format!("{NODE}.NODE.Flotilla.INTERNAL.").to_uppercase();
        let response = query(&mut client, &shouted, RecordType::A).await;
        assert_eq!(a_records(&response), vec![ip(0, 7)], "{transport}");

        // Unknown names in the zone: NXDOMAIN with the SOA (for negative caching).
        for unknown in [
            format!("ffffffff-1b2c-4d3e-8f90-0123456789ab.node.{DOMAIN}"),
            format!("db.cluster.{DOMAIN}"),
            format!("x.{NODE}.node.{DOMAIN}"),
            format!("www.{DOMAIN}"),
        ] {
            let response = query(&mut client, &unknown, RecordType::A).await;
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::NXDomain,
                "{transport} {unknown}"
            );
            assert!(response.metadata.authoritative, "{transport} {unknown}");
            assert!(response.answers.is_empty(), "{transport} {unknown}");
            assert!(has_soa_authority(&response), "{transport} {unknown}");
        }

        // Other types of an existing name: NODATA (NOERROR, no answer, SOA in authority).
        for kind in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let response = query(&mut client, &node, kind).await;
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::NoError,
                "{transport} {kind}"
            );
            assert!(response.answers.is_empty(), "{transport} {kind}");
            assert!(has_soa_authority(&response), "{transport} {kind}");
        }

        // The parents of the records exist (NODATA, not NXDOMAIN).
        for parent in [format!("node.{DOMAIN}"), format!("cluster.{DOMAIN}")] {
            let response = query(&mut client, &parent, RecordType::A).await;
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::NoError,
                "{transport} {parent}"
            );
            assert!(response.answers.is_empty(), "{transport} {parent}");
        }

        // The apex answers SOA and NS.
        let response = query(&mut client, DOMAIN, RecordType::SOA).await;
        assert_eq!(response.answers.len(), 1, "{transport}");
        match &response.answers[0].data {
            RData::SOA(soa) => {
                assert_eq!(soa.mname.to_ascii(), format!("ns.{DOMAIN}."));
                assert_eq!(soa.serial, server.zone.serial());
            }
            other => panic!("{transport}: SOA expected, got {other:?}"),
        }
        let response = query(&mut client, &format!("{DOMAIN}."), RecordType::NS).await;
        assert!(
            matches!(response.answers.as_slice(), [ns] if ns.record_type() == RecordType::NS),
            "{transport}: {:?}",
            response.answers
        );

        // Outside the zone: REFUSED, not authoritative (we are not a resolver).
        for outside in [
            "example.com",
            "internal",
            "flotilla.internal.example.com",
            ".",
        ] {
            let response = query(&mut client, outside, RecordType::A).await;
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::Refused,
                "{transport} {outside}"
            );
            assert!(!response.metadata.authoritative, "{transport} {outside}");
            assert!(response.answers.is_empty(), "{transport} {outside}");
        }
    }
}

#[tokio::test]
async fn dns_replace_takes_effect_on_the_next_query() {
    let server = Server::start().await;
    let node = node_name();
    let cluster = server.zone.cluster_fqdn("web", None);
    let mut udp = server.udp_client().await;
    let mut tcp = server.tcp_client().await;

    let response = query(&mut udp, &node, RecordType::A).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);

    server.set(&[(&node, &[ip(0, 1)]), (&cluster, &[ip(0, 1)])]);
    assert_eq!(
        a_records(&query(&mut udp, &node, RecordType::A).await),
        vec![ip(0, 1)]
    );

    // The node's IP changes (stop/start): the very next query sees it, on both transports.
    server.set(&[(&node, &[ip(0, 2)]), (&cluster, &[ip(0, 2)])]);
    assert_eq!(
        a_records(&query(&mut udp, &node, RecordType::A).await),
        vec![ip(0, 2)]
    );
    assert_eq!(
        a_records(&query(&mut tcp, &node, RecordType::A).await),
        vec![ip(0, 2)]
    );
    assert_eq!(
        a_records(&query(&mut tcp, &cluster, RecordType::A).await),
        vec![ip(0, 2)]
    );

    // Terminated: the node disappears, and so does a cluster without deployed nodes.
    server.set(&[(&cluster, &[])]);
    for name in [&node, &cluster] {
        for client in [&mut udp, &mut tcp] {
            let response = query(client, name, RecordType::A).await;
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn dns_large_cluster_is_truncated_over_udp_and_complete_over_tcp() {
    let server = Server::start().await;
    let cluster = server.zone.cluster_fqdn("big", None);
    let ips: Vec<Ipv4Addr> = (0..200u8).map(|i| ip(i % 4, i)).collect();
    server.set(&[(&cluster, &ips)]);
    let mut sorted = ips.clone();
    sorted.sort();

    // 200 A records do not fit the client's UDP payload size: TC, so it would retry on TCP.
    let response = query(&mut server.udp_client().await, &cluster, RecordType::A).await;
    assert!(response.metadata.truncation, "TC bit expected");
    assert!(response.answers.is_empty());

    let response = query(&mut server.tcp_client().await, &cluster, RecordType::A).await;
    assert!(!response.metadata.truncation);
    assert_eq!(a_records(&response), sorted);
}

#[tokio::test]
async fn dns_serves_ten_thousand_records() {
    let server = Server::start().await;
    let mut records: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for i in 0..10_000u32 {
        let [_, _, c, d] = i.to_be_bytes();
        records.insert(
            format!("00000000-0000-4000-8000-{i:012}.node.{DOMAIN}"),
            vec![Ipv4Addr::new(10, 1, c, d)],
        );
    }
    for cluster in 0..100u32 {
        let ips = (0..5u8)
            .map(|n| Ipv4Addr::new(10, 2, cluster as u8, n))
            .collect();
        records.insert(server.zone.cluster_fqdn(&format!("c{cluster}"), None), ips);
    }
    let changes = server.zone.replace(records);
    assert_eq!(changes.len(), 10_100);
    assert_eq!(server.zone.len(), 10_100);

    let mut udp = server.udp_client().await;
    let mut tcp = server.tcp_client().await;
    for i in (0..10_000u32).step_by(397) {
        let [_, _, c, d] = i.to_be_bytes();
        let name = format!("00000000-0000-4000-8000-{i:012}.node.{DOMAIN}");
        let client = if i % 2 == 0 { &mut udp } else { &mut tcp };
        let response = query(client, &name, RecordType::A).await;
        assert_eq!(
            a_records(&response),
            vec![Ipv4Addr::new(10, 1, c, d)],
            "{name}"
        );
    }
    let response = query(&mut udp, &format!("c42.cluster.{DOMAIN}"), RecordType::A).await;
    assert_eq!(a_records(&response).len(), 5);
}

#[tokio::test]
async fn dns_server_stops_on_shutdown() {
    let mut server = Server::start().await;
    server.set(&[(&node_name(), &[ip(0, 1)])]);
    let mut tcp = server.tcp_client().await;
    assert_eq!(
        a_records(&query(&mut tcp, &node_name(), RecordType::A).await),
        vec![ip(0, 1)]
    );

    let _ = server.stop.take().map(|stop| stop.send(()));
    let result = (&mut server.task)
        .await
        .expect("the server task does not panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        tokio::net::TcpStream::connect(server.tcp).await.is_err(),
        "the TCP listener is closed"
    );
    // The open connection was closed too: the query fails instead of being answered.
    let name = Name::from_str(&node_name()).expect("a DNS name");
    assert!(tcp.query(name, DNSClass::IN, RecordType::A).await.is_err());
}

/// A query as raw bytes, so that nothing between the test and the server changes the name.
fn raw_query(id: u16, name: &str, kind: u16) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.trim_end_matches('.').split('.') {
        packet.push(u8::try_from(label.len()).expect("short label"));
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&kind.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes()); // IN
    packet
}

#[tokio::test]
async fn dns_names_are_case_insensitive_on_the_wire() {
    let server = Server::start().await;
    server.set(&[(&node_name(), &[ip(0, 7)])]);
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let shouted = format!("{NODE}.NoDe.FLOTILLA.Internal").to_uppercase();
    socket
        .send_to(&raw_query(0x1234, &shouted, 1), server.udp)
        .await
        .expect("send");
    let mut buffer = [0u8; 1500];
    let (len, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.recv_from(&mut buffer),
    )
    .await
    .expect("an answer within 5 s")
    .expect("recv");
    let answer = &buffer[..len];
    assert_eq!(&answer[..2], &0x1234u16.to_be_bytes(), "same id");
    assert_ne!(answer[2] & 0x04, 0, "AA bit");
    assert_eq!(answer[3] & 0x0f, 0, "NOERROR");
    assert_eq!(&answer[6..8], &1u16.to_be_bytes(), "one answer");
    // The question is echoed as asked, and the answer ends with our IP.
    assert!(
        answer.windows(4).any(|w| w == b"NODE"),
        "the question keeps its case"
    );
    assert_eq!(&answer[len - 4..], &ip(0, 7).octets());
}
