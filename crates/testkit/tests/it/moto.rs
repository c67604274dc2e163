//! The moto server itself: shared instance and dedicated ones.

use std::net::TcpStream;

use flotilla_testkit::Moto;

#[test]
fn shared_server_is_started_once_and_answers() {
    let a = Moto::shared();
    let b = Moto::shared();
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.endpoint(), format!("http://127.0.0.1:{}", a.port()));
    TcpStream::connect(("127.0.0.1", a.port())).expect("shared moto accepts connections");
}

#[test]
fn dedicated_server_is_separate_and_dies_on_drop() {
    let dedicated = Moto::start_dedicated();
    let port = dedicated.port();
    assert_ne!(port, Moto::shared().port());
    TcpStream::connect(("127.0.0.1", port)).expect("dedicated moto accepts connections");
    drop(dedicated);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "moto still listening after drop"
    );
}
