//! The decision log of `spec.policy.decisionLog`: the runtime's flags, and for the `file` sink
//! the `decision-log` emptyDir it writes to (sized for the runtime's rotation: the file and one
//! previous one).

use k8s_openapi::{
    api::core::v1::{EmptyDirVolumeSource, Volume, VolumeMount},
    apimachinery::pkg::api::resource::Quantity,
};
use kinfer_api::inference_service::DecisionLogSink;
use kinfer_contract::flags::DecisionLogFlags;

use super::pod::mount;
use crate::validate::Validated;

/// Where the `file` sink's volume is mounted in the runtime container.
pub const DIR: &str = "/var/log/kinfer";
/// The file the runtime writes there.
pub const FILE: &str = "decisions.jsonl";
/// The runtime rotates the file at this size, keeping one previous file.
pub const MAX_BYTES: u64 = 64 << 20;
/// The volume's size limit: both files and room to spare (a full emptyDir evicts the pod).
pub const VOLUME_SIZE: &str = "160Mi";

/// The runtime's decision-log flags, when the policy asks for a log.
pub fn flags(v: &Validated) -> Option<DecisionLogFlags> {
    let log = v.spec.policy.as_ref()?.decision_log.as_ref()?;
    Some(match log.sink {
        DecisionLogSink::Stdout => DecisionLogFlags {
            target: "-".into(),
            sample_rate: log.sample_rate,
            max_bytes: None,
        },
        DecisionLogSink::File => DecisionLogFlags {
            target: format!("{DIR}/{FILE}"),
            sample_rate: log.sample_rate,
            max_bytes: Some(MAX_BYTES),
        },
    })
}

/// The `decision-log` volume and its mount in the runtime, for the `file` sink.
pub fn volume(v: &Validated) -> Option<(Volume, VolumeMount)> {
    let log = v.spec.policy.as_ref()?.decision_log.as_ref()?;
    (log.sink == DecisionLogSink::File).then(|| {
        (
            Volume {
                name: "decision-log".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(VOLUME_SIZE.into())),
                    ..Default::default()
                }),
                ..Default::default()
            },
            mount("decision-log", DIR),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{
        Defaults,
        deployment::{POLICY_FILE, deployment, policy_config_map, runtime_args},
        tests::validated,
    };

    const POLICY: &str = r#""policy":{"output":"score","thresholds":[{"min":0.9,"label":"block"}]"#;

    #[test]
    fn stdout_is_the_default_sink_and_the_policy_file_leaves_the_log_out() {
        let v = validated(&format!(
            r#"{{"modelVersion":"v",{POLICY},"decisionLog":{{"sampleRate":0.25}}}}}}"#
        ));
        let args = runtime_args(&v).join(" ");
        assert!(
            args.contains("--decision-log - --decision-log-sample 0.25"),
            "{args}"
        );
        assert!(!args.contains("--decision-log-max-bytes"), "{args}");
        assert!(volume(&v).is_none());
        // The runtime's policy file has no such field (it refuses unknown ones).
        let cm = policy_config_map(&v).unwrap();
        let text = &cm.data.unwrap()[POLICY_FILE];
        assert!(!text.contains("decisionLog"), "{text}");
        assert!(text.contains("block"), "{text}");
    }

    #[test]
    fn the_file_sink_writes_on_its_own_sized_volume() {
        let v = validated(&format!(
            r#"{{"modelVersion":"v",{POLICY},"decisionLog":{{"sink":"file"}}}}}}"#
        ));
        let args = runtime_args(&v).join(" ");
        assert!(
            args.contains(&format!(
                "--decision-log {DIR}/{FILE} --decision-log-sample 1 --decision-log-max-bytes {MAX_BYTES}"
            )),
            "{args}"
        );
        let pod = deployment(&v, &Defaults::default())
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|x| x.name == "decision-log")
            .unwrap();
        assert_eq!(
            vol.empty_dir.unwrap().size_limit,
            Some(Quantity(VOLUME_SIZE.into()))
        );
        let runtime = &pod.containers[0];
        assert!(
            runtime
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "decision-log" && m.mount_path == DIR)
        );
        // Both files fit: the log can never fill the volume and get the pod evicted.
        assert!(2 * MAX_BYTES < crate::quantity::memory_bytes(VOLUME_SIZE).unwrap() as u64);
    }

    #[test]
    fn no_log_without_the_field() {
        let v = validated(&format!(r#"{{"modelVersion":"v",{POLICY}}}}}"#));
        assert!(flags(&v).is_none() && volume(&v).is_none());
        assert!(!runtime_args(&v).join(" ").contains("--decision-log"));
    }
}
