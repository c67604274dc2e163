//! Launching, observing and terminating instances; zones and images of a region.
//!
//! A launch is one `RunInstances` for every node of one subnet. Tags are the same for every
//! instance of a call, so the tags name the batch (`flotilla:slots=first-last`) and each
//! instance's slot is `first + AmiLaunchIndex` — EC2's own index of an instance within its
//! launch. The node uuid is derived from (cluster, slot), so observation alone rebuilds every
//! node's identity. The `ClientToken` makes a resent launch return the original reservation
//! on AWS; moto ignores it, which is why identity never depends on it.

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceType, ResourceType, Tag, TagSpecification,
    VolumeType,
};
use base64::Engine;
use flotilla_core::cloud::{AvailabilityZone, CloudError, Instance, InstanceState, LaunchRequest};
use flotilla_core::tags;

use crate::call::Idempotency::Safe;
use crate::{Aws, Image};

/// Tag on every instance of a launch: the slots it holds, `first-last`.
pub(crate) const SLOTS: &str = "flotilla:slots";

pub(crate) fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

pub(crate) fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

pub(crate) fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

pub(crate) fn tag_spec(resource: ResourceType, tags: Vec<Tag>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(tags))
        .build()
}

/// Launches every node of `request` in one call.
pub(crate) async fn launch(
    aws: &Aws,
    request: &LaunchRequest,
) -> Result<Vec<Instance>, CloudError> {
    let count = request.nodes.len() as i32;
    if count == 0 {
        return Ok(Vec::new());
    }
    let first = request.first_slot();
    let last = first + request.nodes.len() as u32 - 1;
    let slots: Vec<u32> = request.nodes.iter().map(|n| n.slot).collect();
    let token = tags::launch_client_token(
        &request.cluster_uuid,
        request.generation,
        &request.subnet_id,
        &slots,
    );
    let owner = aws.settings.owner.clone();
    let base_tags = vec![
        tag(tags::OWNER, &owner),
        tag(tags::CLUSTER, &request.cluster_uuid),
    ];
    let mut instance_tags = base_tags.clone();
    instance_tags.push(tag(
        "Name",
        &format!(
            "flotilla-{}",
            &request.cluster_uuid[..8.min(request.cluster_uuid.len())]
        ),
    ));
    instance_tags.push(tag(SLOTS, &format!("{first}-{last}")));
    instance_tags.push(tag("flotilla:generation", &request.generation.to_string()));
    let image = aws
        .image_for(&request.region, Some(&request.image_id))
        .await?;
    let user_data = base64::engine::general_purpose::STANDARD.encode(&request.user_data);
    let ec2 = aws.ec2(&request.region);

    let result = aws
        .send(&request.region, "RunInstances", Safe, || {
            let mut call = ec2
                .run_instances()
                .image_id(&request.image_id)
                .instance_type(InstanceType::from(request.node_type.as_str()))
                .min_count(count)
                .max_count(count)
                .client_token(&token)
                .network_interfaces(
                    InstanceNetworkInterfaceSpecification::builder()
                        .device_index(0)
                        .subnet_id(&request.subnet_id)
                        .associate_public_ip_address(true)
                        .delete_on_termination(true)
                        .set_groups(Some(request.security_groups.clone()))
                        .build(),
                )
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(&image.root_device_name)
                        .ebs(
                            EbsBlockDevice::builder()
                                .volume_size(request.disk_gb as i32)
                                .volume_type(VolumeType::Gp2)
                                .delete_on_termination(true)
                                .build(),
                        )
                        .build(),
                )
                // IMDSv2 only: a container that reaches the metadata service cannot steal the
                // instance role with a plain GET.
                .metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_tokens(HttpTokensState::Required)
                        .http_endpoint(InstanceMetadataEndpointState::Enabled)
                        .build(),
                )
                .user_data(&user_data)
                .tag_specifications(tag_spec(ResourceType::Instance, instance_tags.clone()))
                .tag_specifications(tag_spec(ResourceType::Volume, base_tags.clone()))
                .tag_specifications(tag_spec(ResourceType::NetworkInterface, base_tags.clone()));
            if let Some(profile) = &request.instance_profile_name {
                call = call.iam_instance_profile(
                    IamInstanceProfileSpecification::builder()
                        .name(profile)
                        .build(),
                );
            }
            if let Some(key) = &request.key_name {
                call = call.key_name(key);
            }
            call.send()
        })
        .await;
    let output = match result {
        Ok(output) => output,
        Err(error)
            if matches!(
                error.code(),
                "InsufficientInstanceCapacity" | "InsufficientCapacity" | "Unsupported"
            ) =>
        {
            return Err(CloudError::Capacity {
                availability_zone: request.availability_zone.clone(),
                instance_type: request.node_type.clone(),
                message: format!("{}: {}", error.code(), error.message),
            });
        }
        Err(error) => return Err(error.into_cloud_error()),
    };
    let mut launched: Vec<Instance> = output
        .instances()
        .iter()
        .filter_map(|i| to_instance(i, &request.cluster_uuid, Some(first)))
        .collect();
    launched.sort_by_key(|i| i.slot);
    Ok(launched)
}

/// Builds our view of an instance; `None` for instances without our slot tags.
fn to_instance(
    instance: &aws_sdk_ec2::types::Instance,
    cluster: &str,
    first_slot: Option<u32>,
) -> Option<Instance> {
    let tag_value = |key: &str| {
        instance
            .tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
    };
    let cluster_uuid = tag_value(tags::CLUSTER).unwrap_or(cluster).to_owned();
    let first = match first_slot {
        Some(first) => first,
        None => tag_value(SLOTS)?.split('-').next()?.parse().ok()?,
    };
    let slot = first + instance.ami_launch_index().unwrap_or(0) as u32;
    let state = instance
        .state()
        .and_then(|s| s.name())
        .and_then(|n| InstanceState::parse(n.as_str()))
        .unwrap_or(InstanceState::Pending);
    Some(Instance {
        instance_id: instance.instance_id()?.to_owned(),
        node_uuid: tags::node_uuid(&cluster_uuid, slot),
        cluster_uuid,
        slot,
        state,
        availability_zone: instance
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_owned(),
        // A terminated instance may have left its subnet: it is still listed (its slot is
        // gone), with no subnet.
        subnet_id: match instance.subnet_id() {
            Some(subnet) => subnet.to_owned(),
            None => String::new(),
        },
        private_ip: instance.private_ip_address().map(str::to_owned),
        public_ip: instance.public_ip_address().map(str::to_owned),
    })
}

/// Terminates instances; ids that no longer exist are not an error.
pub(crate) async fn terminate(
    aws: &Aws,
    region: &str,
    instance_ids: &[String],
) -> Result<(), CloudError> {
    let ec2 = aws.ec2(region);
    for chunk in instance_ids.chunks(1000) {
        let result = aws
            .send(region, "TerminateInstances", Safe, || {
                ec2.terminate_instances()
                    .set_instance_ids(Some(chunk.to_vec()))
                    .send()
            })
            .await;
        match result {
            Ok(_) => {}
            // One unknown id fails the whole call: retry the rest one by one. (moto also fails
            // a repeated termination with InvalidNetworkInterfaceID.NotFound.)
            Err(error) if gone(&error) => {
                for id in chunk {
                    let single = aws
                        .send(region, "TerminateInstances", Safe, || {
                            ec2.terminate_instances().instance_ids(id).send()
                        })
                        .await;
                    match single {
                        Ok(_) => {}
                        Err(error) if gone(&error) => {
                            tracing::info!(instance = %id, "already gone");
                        }
                        Err(error) => return Err(error.into_cloud_error()),
                    }
                }
            }
            Err(error) => return Err(error.into_cloud_error()),
        }
    }
    Ok(())
}

fn gone(error: &crate::call::CallError) -> bool {
    error.starts_with("InvalidInstanceID") || error.is("InvalidNetworkInterfaceID.NotFound")
}

impl Aws {
    /// Instances with our owner tag (and the cluster's tag when given), all states.
    pub(crate) async fn describe_instances_by_tag(
        &self,
        region: &str,
        cluster_uuid: Option<&str>,
    ) -> Result<Vec<Instance>, CloudError> {
        let ec2 = self.ec2(region);
        let mut filters = vec![tag_filter(tags::OWNER, &self.settings.owner)];
        if let Some(cluster) = cluster_uuid {
            filters.push(tag_filter(tags::CLUSTER, cluster));
        }
        let mut found = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .send(region, "DescribeInstances", Safe, || {
                    ec2.describe_instances()
                        .set_filters(Some(filters.clone()))
                        .set_next_token(next_token.clone())
                        .max_results(1000)
                        .send()
                })
                .await
                .map_err(|e| e.into_cloud_error())?;
            for reservation in page.reservations() {
                found.extend(
                    reservation
                        .instances()
                        .iter()
                        .filter_map(|i| to_instance(i, cluster_uuid.unwrap_or(""), None)),
                );
            }
            next_token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        found.sort_by(|a, b| (&a.cluster_uuid, a.slot).cmp(&(&b.cluster_uuid, b.slot)));
        Ok(found)
    }

    /// The region's AZs (cached: they do not change while we run).
    pub(crate) async fn zones_of(&self, region: &str) -> Result<Vec<AvailabilityZone>, CloudError> {
        if let Some(zones) = self
            .zones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(region)
        {
            return Ok(zones.clone());
        }
        let ec2 = self.ec2(region);
        let output = self
            .send(region, "DescribeAvailabilityZones", Safe, || {
                ec2.describe_availability_zones().send()
            })
            .await
            .map_err(|e| e.into_cloud_error())?;
        let mut zones: Vec<AvailabilityZone> = output
            .availability_zones()
            .iter()
            .filter(|z| z.zone_type().is_none_or(|t| t == "availability-zone"))
            .filter_map(|z| {
                Some(AvailabilityZone {
                    name: z.zone_name()?.to_owned(),
                    available: z.state().is_none_or(|s| s.as_str() == "available"),
                })
            })
            .collect();
        zones.sort_by(|a, b| a.name.cmp(&b.name));
        self.zones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(region.to_owned(), zones.clone());
        Ok(zones)
    }

    /// The image to launch: the one asked for, or the newest official Ubuntu LTS amd64 image
    /// of the region. Cached per region, so only the first launch of a region pays for it.
    pub(crate) async fn image_for(
        &self,
        region: &str,
        image_id: Option<&str>,
    ) -> Result<Image, CloudError> {
        let key = (region.to_owned(), image_id.map(str::to_owned));
        if let Some(image) = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(image.clone());
        }
        let ec2 = self.ec2(region);
        let output = self
            .send(region, "DescribeImages", Safe, || {
                let call = ec2.describe_images();
                match image_id {
                    Some(id) => call.image_ids(id),
                    None => call
                        .owners(UBUNTU_OWNER)
                        .filters(filter("name", &["ubuntu/images/*ubuntu-*-amd64-server-*"]))
                        .filters(filter("architecture", &["x86_64"]))
                        .filters(filter("state", &["available"])),
                }
                .send()
            })
            .await;
        let output = match output {
            Ok(output) => output,
            Err(error) if error.starts_with("InvalidAMIID") => {
                return Err(CloudError::InvalidResource {
                    field: "image_id".into(),
                    message: format!(
                        "image {} does not exist in {region}",
                        image_id.unwrap_or("?")
                    ),
                });
            }
            Err(error) => return Err(error.into_cloud_error()),
        };
        // Newest first: creation date, then name (Ubuntu names end in a build date).
        let best = output.images().iter().max_by(|a, b| {
            (a.creation_date().unwrap_or(""), a.name().unwrap_or(""))
                .cmp(&(b.creation_date().unwrap_or(""), b.name().unwrap_or("")))
        });
        let Some(best) = best else {
            return Err(CloudError::InvalidResource {
                field: "image_id".into(),
                message: match image_id {
                    Some(id) => format!("image {id} does not exist in {region}"),
                    None => format!("no Ubuntu image found in {region}; pass an image id"),
                },
            });
        };
        let image = Image {
            id: crate::network::returned_id(best.image_id(), "DescribeImages")?,
            root_device_name: best.root_device_name().unwrap_or("/dev/sda1").to_owned(),
        };
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        // Launches name the resolved id: remember the image under that key too.
        images.insert((region.to_owned(), Some(image.id.clone())), image.clone());
        images.insert(key, image.clone());
        Ok(image)
    }
}

/// Canonical's AWS account, the publisher of the official Ubuntu images.
const UBUNTU_OWNER: &str = "099720109477";
