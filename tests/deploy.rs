//! The deployment files in `deploy/` checked against paygate itself: the Dockerfile, docker
//! compose (two replicas, HAProxy, Redis, PostgreSQL, Prometheus, Grafana, simulators), the
//! Kubernetes manifests, the Prometheus configs and rules, and the Grafana dashboard.
//!
//! Every YAML file is parsed; ports, probe paths and environment variables are compared
//! with `deploy/routes.cluster.toml`, with what paygate's admin listener really serves (a
//! real gateway is started), and with what `paygate check` accepts. The outside tools run
//! where they exist, and say so where they do not (never silently):
//! - `kubectl` renders `deploy/k8s` offline (`kubectl kustomize`) and rebuilds the ConfigMap
//!   from the routes file (`kubectl create configmap --dry-run=client`). `kubectl apply
//!   --dry-run=client` is not used: even a client dry run asks an API server for its
//!   resource types, and there is none here.
//! - `docker compose config` validates the compose file where the compose plugin exists; it
//!   does not on the development machines (a docker client without the compose plugin or an
//!   engine), so there the checks rest on the parse below.
//! - `promtool` checks the rules and the compose Prometheus config and runs the alert unit
//!   tests; `haproxy -c` checks the load balancer's config.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use serde_norway::Value;

use support::{
    BIN, KEY, Process, base_config, card_payment, get_payment, pay, scratch_dir, try_send,
};

// --- files -------------------------------------------------------------------------------------

const ROUTES: &str = "deploy/routes.cluster.toml";
const COMPOSE: &str = "deploy/compose/compose.yaml";
const HAPROXY: &str = "deploy/compose/haproxy.cfg";
const COMPOSE_PROMETHEUS: &str = "deploy/compose/prometheus.yml";
const K8S: &str = "deploy/k8s";
/// Where the image and every deployment put the routes file (`PAYGATE_CONFIG`).
const ROUTES_IN_CONTAINER: &str = "/etc/paygate/routes.toml";
/// The only placeholder a committed secret value may hold.
const PLACEHOLDER: &str = "REPLACE_ME";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// Every file under `deploy/`, as paths relative to the repository root.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read deploy folder") {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("deploy"), &mut files);
    let mut files: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    files
}

/// Every document of a YAML file, with merge keys (`<<: *anchor`) applied as compose does.
fn yaml_docs(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            let mut value =
                Value::deserialize(document).unwrap_or_else(|e| panic!("{relative}: {e}"));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{relative}: merge keys: {e}"));
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn yaml(relative: &str) -> Value {
    let mut documents = yaml_docs(relative);
    assert_eq!(documents.len(), 1, "{relative}: one YAML document expected");
    documents.remove(0)
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: a string expected, found {value:?}"))
}

fn items<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: a list expected, found {value:?}"))
}

fn number(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: a number expected, found {value:?}"))
}

// --- the routes file ---------------------------------------------------------------------------

struct Ports {
    merchant: u16,
    admin: u16,
}

fn routes() -> toml::Table {
    read(ROUTES)
        .parse()
        .unwrap_or_else(|e| panic!("{ROUTES}: {e}"))
}

/// `[server] listen` and `admin_listen` of the cluster routes file.
fn ports() -> Ports {
    let routes = routes();
    let port = |key: &str| {
        let address = routes["server"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{ROUTES}: [server] {key} missing"));
        address
            .parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("{ROUTES}: [server] {key} {address:?}: {e}"))
            .port()
    };
    let ports = Ports {
        merchant: port("listen"),
        admin: port("admin_listen"),
    };
    assert_ne!(ports.merchant, 0, "a deployment needs fixed ports");
    assert_ne!(ports.admin, 0, "a deployment needs fixed ports");
    ports
}

/// The variables that a gateway on the cluster routes file needs: every `env:NAME` of the
/// file, and the admin token.
fn gateway_variables() -> BTreeSet<String> {
    fn collect(value: &toml::Value, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::String(s) => {
                if let Some(name) = s.strip_prefix("env:") {
                    out.insert(name.to_string());
                }
            }
            toml::Value::Array(values) => values.iter().for_each(|v| collect(v, out)),
            toml::Value::Table(table) => table.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    collect(&toml::Value::Table(routes()), &mut names);
    assert!(
        names.contains("PAYGATE_JOURNAL_URL"),
        "the journal URL comes from the environment"
    );
    names.insert("PAYGATE_ADMIN_TOKEN".to_string());
    names
}

/// `host:port` of each channel URL (`http://psp-a:9101` -> `psp-a`, 9101).
fn channel_hosts() -> Vec<(String, u16)> {
    let routes = routes();
    let channels = routes["channels"].as_array().expect("[[channels]]");
    channels
        .iter()
        .map(|channel| {
            let url = channel["url"].as_str().expect("channel url");
            let uri: http::Uri = url.parse().expect("channel url parses");
            let port = uri.port_u16().expect("channel url names its port");
            (uri.host().expect("channel host").to_string(), port)
        })
        .collect()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

/// Whether `program` runs here at all (`program ARGS` exits 0).
fn tool_exists(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Says what a test could not run. Written to the process's stderr directly rather than
/// with `eprintln!`, which the test harness captures and hides for a passing test.
fn notice(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOTICE (tests/deploy.rs): {what}");
}

/// `paygate check FILE` with the cluster's variables set to placeholders.
fn paygate_check(file: &Path) -> Output {
    let mut command = Command::new(BIN);
    command.arg("check").arg(file);
    for name in gateway_variables() {
        // The journal URL must parse as one; a password is fine, it comes from `env:`.
        let value = match name.as_str() {
            "PAYGATE_JOURNAL_URL" => "postgres://paygate:placeholder@postgres:5432/paygate",
            _ => "placeholder-for-paygate-check",
        };
        command.env(name, value);
    }
    run(&mut command)
}

/// `paygate check` accepts `file`, a copy of the cluster routes file.
fn assert_paygate_accepts(file: &Path) {
    let output = paygate_check(file);
    assert!(
        output.status.success(),
        "paygate check refused {}:\n{}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn routes_cluster_toml_is_accepted_by_paygate_check() {
    assert_paygate_accepts(&root().join(ROUTES));
}

// --- every YAML file ---------------------------------------------------------------------------

#[test]
fn every_yaml_file_in_deploy_parses() {
    let files: Vec<String> = deploy_files()
        .into_iter()
        .filter(|f| f.ends_with(".yml") || f.ends_with(".yaml"))
        .collect();
    for file in &files {
        let documents = yaml_docs(file);
        assert!(!documents.is_empty(), "{file}: no YAML document");
        for document in &documents {
            assert!(
                document.is_mapping(),
                "{file}: a document that is not a mapping"
            );
        }
    }
    for expected in [
        COMPOSE,
        COMPOSE_PROMETHEUS,
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/cluster_alerts_test.yml",
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/paygate.yml",
        "deploy/k8s/deployment.yaml",
        "deploy/k8s/kustomization.yaml",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} missing");
    }
}

// --- Dockerfile --------------------------------------------------------------------------------

struct Instruction {
    keyword: String,
    arguments: String,
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, arguments) = pending.split_once(' ').unwrap_or((&pending, ""));
        instructions.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            arguments: arguments.trim().to_string(),
        });
        pending.clear();
    }
    assert!(
        pending.is_empty(),
        "Dockerfile ends inside a continued line"
    );
    instructions
}

/// The instructions of each stage, from its FROM on.
fn stages(instructions: &[Instruction]) -> Vec<&[Instruction]> {
    let starts: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "FROM")
        .map(|(n, _)| n)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| &instructions[start..*starts.get(k + 1).unwrap_or(&instructions.len())])
        .collect()
}

/// The uid the image runs as.
fn image_uid() -> u64 {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    let runtime = stages.last().expect("a stage");
    let user = runtime
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("the runtime stage sets USER");
    let uid = user.arguments.split(':').next().unwrap_or_default();
    uid.parse().unwrap_or_else(|_| {
        panic!(
            "USER {:?}: a numeric uid, so that runAsNonRoot can check it",
            user.arguments
        )
    })
}

#[test]
fn dockerfile_builds_in_two_stages_and_runs_as_non_root_with_a_healthcheck() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    assert!(stages.len() >= 2, "a multi-stage build");
    let (build, runtime) = (stages[0], stages[stages.len() - 1]);

    let from = &build[0].arguments;
    assert!(from.starts_with("rust:1.95"), "builder image: {from}");
    let name = from
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0].eq_ignore_ascii_case("AS"))
        .map(|w| w[1].to_string())
        .expect("the build stage is named");
    assert!(
        build
            .iter()
            .any(|i| i.keyword == "RUN" && i.arguments.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );

    let base = &runtime[0].arguments;
    assert!(
        base.starts_with("debian:bookworm-slim") || base.starts_with("gcr.io/distroless/"),
        "runtime image: {base}"
    );
    if base.starts_with("debian:bookworm") {
        // A glibc binary runs only on the glibc it was linked against, or a newer one.
        assert!(
            from.contains("bookworm"),
            "builder {from} and runtime {base} differ in Debian release"
        );
    }
    assert!(
        runtime
            .iter()
            .any(|i| i.keyword == "COPY" && i.arguments.contains(&format!("--from={name}"))),
        "the runtime copies the binary from stage {name}"
    );

    let uid = image_uid();
    assert_ne!(uid, 0, "the image must not run as root");

    let ports = ports();
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.arguments.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([ports.merchant, ports.admin]),
        "EXPOSE"
    );

    let healthcheck = runtime
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("a HEALTHCHECK");
    let probe = probe_url(&healthcheck.arguments);
    assert_eq!(
        probe.port, ports.admin,
        "the healthcheck probes the admin port"
    );
    assert_eq!(probe.path, "/healthz", "the healthcheck is liveness");
    let tool = healthcheck
        .arguments
        .split_whitespace()
        .nth(
            healthcheck
                .arguments
                .split_whitespace()
                .position(|w| w == "CMD")
                .expect("CMD")
                + 1,
        )
        .expect("the healthcheck's program");
    assert!(
        tool == "paygate"
            || runtime.iter().any(|i| i.keyword == "RUN"
                && i.arguments.contains("apt-get install")
                && i.arguments.contains(tool)),
        "the runtime stage installs {tool}, which the healthcheck runs"
    );

    let entrypoint = runtime
        .iter()
        .find(|i| i.keyword == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    assert!(
        entrypoint.arguments.contains("paygate"),
        "ENTRYPOINT {}",
        entrypoint.arguments
    );
    assert!(
        runtime.iter().any(|i| i.keyword == "ENV"
            && i.arguments
                .contains(&format!("PAYGATE_CONFIG={ROUTES_IN_CONTAINER}"))),
        "the image reads the routes file at {ROUTES_IN_CONTAINER}"
    );
}

#[test]
fn dockerignore_keeps_the_build_context_small_but_whole() {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/"] {
        assert!(
            patterns.contains(&needed),
            ".dockerignore leaves out {needed}"
        );
    }
    // cargo refuses a manifest whose declared [[bench]] targets are missing.
    for kept in ["benches", "src", "Cargo.toml", "Cargo.lock"] {
        assert!(
            !patterns.iter().any(|p| p.trim_end_matches('/') == kept),
            ".dockerignore must not drop {kept}"
        );
    }
}

// --- probe paths: what the admin listener really serves ----------------------------------------

struct Probe {
    port: u16,
    path: String,
}

/// The first `http://HOST:PORT/PATH` in `text`; a port written `${VAR:-N}` counts as N.
fn probe_url(text: &str) -> Probe {
    let start = text.find("http://").expect("an http:// URL");
    let rest = &text[start + "http://".len()..];
    let rest = rest.split(['"', ' ', '\'']).next().unwrap_or_default();
    let slash = rest.find('/').expect("a path");
    let (authority, path) = rest.split_at(slash);
    let port = match authority.split_once(":${") {
        Some((_, variable)) => variable
            .strip_suffix('}')
            .and_then(|v| v.split_once(":-"))
            .map(|(_, default)| default)
            .unwrap_or_else(|| panic!("a port variable without a default in {text:?}")),
        None => authority.rsplit_once(':').expect("a port").1,
    };
    Probe {
        port: port.parse().unwrap_or_else(|_| panic!("port of {text:?}")),
        path: path.to_string(),
    }
}

#[tokio::test]
async fn probes_ask_paths_the_admin_listener_serves() {
    // A real gateway: which admin paths answer 200, and that an unknown one does not (so
    // the check can tell them apart).
    let config = format!(
        "{}\n[[channels]]\nname = \"psp_a\"\nurl = \"sim://sim_a\"\n\n[[rules]]\nname = \"all\"\nchannels = [\"psp_a\"]\n\n[[simulators]]\nname = \"sim_a\"\n",
        base_config()
    );
    let gateway = Process::gateway(&config).await;
    let mut served = BTreeSet::new();
    for path in ["/healthz", "/readyz", "/metrics", "/no-such-probe"] {
        let answer = try_send(Method::GET, &format!("{}{path}", gateway.admin), &[], "")
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        if answer.status == http::StatusCode::OK {
            served.insert(path.to_string());
        }
    }
    assert_eq!(
        served,
        BTreeSet::from(["/healthz".into(), "/readyz".into(), "/metrics".into()]),
        "admin paths answering 200"
    );

    let ports = ports();
    let mut probes: Vec<(String, Probe)> = Vec::new();
    let instructions = dockerfile();
    let healthcheck = instructions
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("HEALTHCHECK");
    probes.push((
        "Dockerfile HEALTHCHECK".into(),
        probe_url(&healthcheck.arguments),
    ));
    let compose = yaml(COMPOSE);
    for replica in ["paygate-1", "paygate-2"] {
        let test = items(
            &compose["services"][replica]["healthcheck"]["test"],
            "healthcheck test",
        );
        let words: Vec<&str> = test.iter().map(|w| text(w, "healthcheck word")).collect();
        probes.push((format!("compose {replica}"), probe_url(&words.join(" "))));
    }
    let deployment = k8s_object("Deployment", "paygate");
    let container = &items(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    )[0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        probes.push((
            format!("k8s {probe}"),
            Probe {
                port: container_port(container, &get["port"]),
                path: text(&get["path"], probe).to_string(),
            },
        ));
    }
    let haproxy = read(HAPROXY);
    let uri = haproxy
        .lines()
        .find_map(|l| l.trim().strip_prefix("http-check send meth GET uri "))
        .expect("haproxy http-check send");
    probes.push((
        "haproxy http-check".into(),
        Probe {
            port: haproxy_check_port(&haproxy),
            path: uri.trim().into(),
        },
    ));
    for (who, probe) in &probes {
        assert!(
            served.contains(&probe.path),
            "{who} asks {}, which paygate does not serve",
            probe.path
        );
        assert_eq!(
            probe.port, ports.admin,
            "{who} probes port {}, not the admin port",
            probe.port
        );
    }
    // Readiness where traffic is steered, liveness where a process is restarted.
    let path = |who: &str| &probes.iter().find(|(w, _)| w == who).expect(who).1.path;
    assert_eq!(path("k8s readinessProbe"), "/readyz");
    assert_eq!(path("k8s livenessProbe"), "/healthz");
    assert_eq!(path("haproxy http-check"), "/readyz");
}

// --- Kubernetes --------------------------------------------------------------------------------

/// Every object of every YAML file in deploy/k8s, with the file it came from (the
/// kustomization itself is not an object).
fn k8s_objects() -> Vec<(String, Value)> {
    let mut objects = Vec::new();
    for file in deploy_files() {
        if !file.starts_with(K8S)
            || file.ends_with("kustomization.yaml")
            || !file.ends_with(".yaml")
        {
            continue;
        }
        for document in yaml_docs(&file) {
            objects.push((file.clone(), document));
        }
    }
    objects
}

fn k8s_object(kind: &str, name: &str) -> Value {
    let mut found: Vec<Value> = k8s_objects()
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| {
            o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name} in {K8S}");
    found.remove(0)
}

/// A port given by number or by the name of one of the container's ports.
fn container_port(container: &Value, port: &Value) -> u16 {
    let number = match port {
        Value::Number(_) => number(port, "port"),
        Value::String(name) => items(&container["ports"], "container ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .map(|p| number(&p["containerPort"], "containerPort"))
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("port {other:?}"),
    };
    u16::try_from(number).expect("a port number")
}

fn pod_labels(deployment: &Value) -> &serde_norway::Mapping {
    deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .expect("pod labels")
}

/// Whether a label selector (`key: value` pairs) selects pods with `labels`.
fn selects(selector: &Value, labels: &serde_norway::Mapping) -> bool {
    let selector = selector.as_mapping().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn k8s_objects_have_api_version_kind_and_name() {
    let objects = k8s_objects();
    let mut kinds = BTreeMap::<String, usize>::new();
    for (file, object) in &objects {
        for field in ["apiVersion", "kind"] {
            assert!(
                object[field].is_string(),
                "{file}: an object without {field}"
            );
        }
        assert!(
            object["metadata"]["name"].is_string(),
            "{file}: an object without metadata.name"
        );
        *kinds
            .entry(text(&object["kind"], "kind").to_string())
            .or_default() += 1;
    }
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.contains_key(kind), "no {kind} in {K8S}: {kinds:?}");
    }
}

#[test]
fn k8s_deployment_runs_three_hardened_replicas_on_the_routes_ports() {
    let ports = ports();
    let deployment = k8s_object("Deployment", "paygate");
    assert_eq!(deployment["apiVersion"].as_str(), Some("apps/v1"));
    let spec = &deployment["spec"];
    assert_eq!(number(&spec["replicas"], "replicas"), 3);
    assert!(
        selects(&spec["selector"]["matchLabels"], pod_labels(&deployment)),
        "the selector picks the pods"
    );

    let pod = &spec["template"]["spec"];
    let containers = items(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let declared: BTreeMap<&str, u64> = items(&container["ports"], "ports")
        .iter()
        .map(|p| {
            (
                text(&p["name"], "port name"),
                number(&p["containerPort"], "containerPort"),
            )
        })
        .collect();
    assert_eq!(
        declared,
        BTreeMap::from([
            ("merchant", u64::from(ports.merchant)),
            ("admin", u64::from(ports.admin))
        ]),
        "containerPorts against [server] listen / admin_listen of {ROUTES}"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container_port(container, &container[probe]["httpGet"]["port"]),
            ports.admin,
            "{probe} port"
        );
    }
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );

    // Non-root, as the image's user; nothing writable.
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        number(&pod_security["runAsUser"], "runAsUser"),
        image_uid(),
        "runAsUser is the image's USER"
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(
        items(&security["capabilities"]["drop"], "capabilities.drop")
            .iter()
            .any(|c| c.as_str() == Some("ALL")),
        "capabilities drop ALL"
    );
    // With a read-only root, the temp folder `paygate report` writes its scratch copy to
    // must be a volume.
    let tmp = items(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/tmp"))
        .expect("a writable /tmp");
    assert!(
        items(&pod["volumes"], "volumes")
            .iter()
            .any(|v| v["name"] == tmp["name"] && v["emptyDir"].is_mapping()),
        "/tmp is an emptyDir"
    );
    for resource in ["cpu", "memory"] {
        assert!(
            container["resources"]["requests"][resource].is_string(),
            "requests.{resource}"
        );
        assert!(
            container["resources"]["limits"][resource].is_string(),
            "limits.{resource}"
        );
    }

    // The routes file: the ConfigMap as a folder (a subPath never sees updates), where
    // PAYGATE_CONFIG says.
    let env: BTreeMap<&str, &Value> = items(&container["env"], "env")
        .iter()
        .map(|e| (text(&e["name"], "env name"), e))
        .collect();
    let config = text(&env["PAYGATE_CONFIG"]["value"], "PAYGATE_CONFIG");
    assert_eq!(config, ROUTES_IN_CONTAINER);
    let volume = items(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == Some("paygate-routes"))
        .expect("a volume of the ConfigMap paygate-routes");
    let mount = items(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap volume is mounted");
    assert!(
        mount["subPath"].is_null(),
        "a subPath mount never sees ConfigMap updates"
    );
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    assert_eq!(
        Path::new(text(&mount["mountPath"], "mountPath")).join("routes.toml"),
        Path::new(config),
        "PAYGATE_CONFIG is the routes.toml of the mounted folder"
    );

    // Every variable the routes file names, and the admin token, from the Secret template.
    let template = k8s_object("Secret", "paygate-secrets");
    for name in gateway_variables() {
        let entry = env
            .get(name.as_str())
            .unwrap_or_else(|| panic!("the Deployment does not set {name}"));
        let reference = &entry["valueFrom"]["secretKeyRef"];
        assert_eq!(
            reference["name"].as_str(),
            Some("paygate-secrets"),
            "{name} from the Secret"
        );
        let key = text(&reference["key"], "secretKeyRef.key");
        assert!(
            !template["stringData"][key].is_null(),
            "secret.example.yaml has no key {key} (for {name})"
        );
    }

    // Shutdown: the pod gets the preStop pause plus the routes file's drain period.
    let drain_ms = routes()["server"]["drain_period_ms"]
        .as_integer()
        .expect("drain_period_ms");
    let pause: u64 = items(
        &container["lifecycle"]["preStop"]["exec"]["command"],
        "preStop",
    )
    .iter()
    .filter_map(|w| w.as_str()?.parse::<u64>().ok())
    .sum();
    let grace = number(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        grace * 1000 > pause * 1000 + u64::try_from(drain_ms).expect("positive"),
        "terminationGracePeriodSeconds {grace} leaves no time for a {pause} s pause and a {drain_ms} ms drain"
    );
}

#[test]
fn k8s_services_target_the_container_ports() {
    let ports = ports();
    let deployment = k8s_object("Deployment", "paygate");
    let container = &items(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    )[0];
    for (name, expected, headless) in [
        ("paygate", ports.merchant, false),
        ("paygate-admin", ports.admin, true),
    ] {
        let service = k8s_object("Service", name);
        assert_eq!(service["apiVersion"].as_str(), Some("v1"));
        assert!(
            selects(&service["spec"]["selector"], pod_labels(&deployment)),
            "Service {name} selects the pods"
        );
        let service_ports = items(&service["spec"]["ports"], "Service ports");
        assert_eq!(service_ports.len(), 1, "Service {name}: one port");
        let target = container_port(container, &service_ports[0]["targetPort"]);
        assert_eq!(target, expected, "Service {name} targetPort");
        assert_eq!(
            service["spec"]["clusterIP"].as_str() == Some("None"),
            headless,
            "Service {name} headless"
        );
    }
    // Prometheus' pod-annotation discovery scrapes the admin port's /metrics.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(ports.admin.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    // The simulated PSPs answer where the channels' URLs point.
    for (host, port) in channel_hosts() {
        let service = k8s_object("Service", &host);
        let simulator = k8s_object("Deployment", &host);
        assert!(
            selects(&service["spec"]["selector"], pod_labels(&simulator)),
            "Service {host} selects its simulator"
        );
        let service_port = &items(&service["spec"]["ports"], "ports")[0];
        assert_eq!(
            number(&service_port["port"], "port"),
            u64::from(port),
            "Service {host} port"
        );
        let container = &items(
            &simulator["spec"]["template"]["spec"]["containers"],
            "containers",
        )[0];
        let listen = mock_psp_listen(
            items(&container["args"], "args")
                .iter()
                .map(|a| text(a, "arg")),
        );
        assert_eq!(
            container_port(container, &service_port["targetPort"]),
            listen,
            "{host}: targetPort is --listen"
        );
    }
}

/// The port of `mock-psp --listen ADDR` in a command line.
fn mock_psp_listen<'a>(words: impl Iterator<Item = &'a str>) -> u16 {
    let words: Vec<&str> = words.collect();
    assert_eq!(
        words.first(),
        Some(&"mock-psp"),
        "a mock-psp command: {words:?}"
    );
    let at = words
        .iter()
        .position(|w| *w == "--listen")
        .expect("--listen");
    words[at + 1]
        .parse::<SocketAddr>()
        .expect("--listen address")
        .port()
}

#[test]
fn k8s_configmap_carries_the_cluster_routes_file() {
    let configmap = k8s_object("ConfigMap", "paygate-routes");
    let routes = text(&configmap["data"]["routes.toml"], "data.routes.toml");
    assert_eq!(
        routes,
        read(ROUTES),
        "deploy/k8s/configmap.yaml differs from {ROUTES}: regenerate it"
    );
    // What the pods will read, through paygate's own loader.
    let mounted = scratch_dir().join("routes.toml");
    std::fs::write(&mounted, routes).expect("write the ConfigMap's routes.toml");
    assert_paygate_accepts(&mounted);
}

#[test]
fn k8s_secret_template_holds_placeholders_only_and_is_never_applied() {
    let secret = k8s_object("Secret", "paygate-secrets");
    let data = secret["stringData"].as_mapping().expect("stringData");
    assert!(
        secret["data"].is_null(),
        "values belong in stringData, as placeholders"
    );
    for (key, value) in data {
        let value = text(value, "secret value");
        assert!(
            value.contains(PLACEHOLDER),
            "secret.example.yaml: {key:?} holds {value:?}, not a placeholder"
        );
    }
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let resources: Vec<&str> = items(&kustomization["resources"], "resources")
        .iter()
        .map(|r| text(r, "resource"))
        .collect();
    assert!(
        !resources.contains(&"secret.example.yaml"),
        "kubectl apply -k would overwrite the real Secret"
    );
    for file in deploy_files().iter().filter(|f| {
        f.starts_with(K8S)
            && !f.ends_with("kustomization.yaml")
            && !f.ends_with("secret.example.yaml")
    }) {
        let name = Path::new(file)
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        assert!(
            resources.contains(&name.as_str()),
            "{file} is not in kustomization.yaml"
        );
    }
}

#[test]
fn k8s_disruption_budget_and_autoscaler_fit_the_deployment() {
    let deployment = k8s_object("Deployment", "paygate");
    let pdb = k8s_object("PodDisruptionBudget", "paygate");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));
    assert!(
        selects(
            &pdb["spec"]["selector"]["matchLabels"],
            pod_labels(&deployment)
        ),
        "the PDB covers the pods"
    );
    let one_at_a_time = pdb["spec"]["maxUnavailable"].as_u64() == Some(1)
        || pdb["spec"]["minAvailable"].as_u64() == Some(2);
    assert!(one_at_a_time, "PDB: maxUnavailable 1 or minAvailable 2");

    let hpa = k8s_object("HorizontalPodAutoscaler", "paygate");
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (target["kind"].as_str(), target["name"].as_str()),
        (Some("Deployment"), Some("paygate"))
    );
    let min = number(&hpa["spec"]["minReplicas"], "minReplicas");
    assert_eq!(
        min,
        number(&deployment["spec"]["replicas"], "replicas"),
        "minReplicas is the Deployment's replicas"
    );
    assert!(number(&hpa["spec"]["maxReplicas"], "maxReplicas") > min);
    let cpu = items(&hpa["spec"]["metrics"], "metrics")
        .iter()
        .find(|m| m["resource"]["name"].as_str() == Some("cpu"))
        .expect("a CPU metric");
    assert_eq!(
        cpu["resource"]["target"]["type"].as_str(),
        Some("Utilization")
    );
    // Utilization is measured against the request: without one the HPA cannot act.
    let container = &items(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    )[0];
    assert!(
        container["resources"]["requests"]["cpu"].is_string(),
        "the HPA needs a CPU request"
    );
}

/// `kubectl ARGS` that never reaches a cluster: an empty kubeconfig and a server address
/// nothing listens on, in case a subcommand did ask for one.
fn kubectl(args: &[&str]) -> Output {
    let kubeconfig = scratch_dir().join("kubeconfig");
    std::fs::write(&kubeconfig, "").expect("write empty kubeconfig");
    run(Command::new("kubectl")
        .args(args)
        .arg("--server=http://127.0.0.1:9")
        .env("KUBECONFIG", &kubeconfig)
        .current_dir(root()))
}

#[test]
fn kubectl_renders_the_manifests_offline() {
    if !tool_exists("kubectl", &["version", "--client"]) {
        notice("kubectl is not installed: deploy/k8s was checked by the YAML parse only");
        return;
    }
    let output = kubectl(&["kustomize", K8S]);
    assert!(
        output.status.success(),
        "kubectl kustomize:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).expect("UTF-8");
    let objects: Vec<Value> = serde_norway::Deserializer::from_str(&rendered)
        .map(|d| Value::deserialize(d).expect("kustomize output parses"))
        .collect();
    let names: BTreeSet<(String, String)> = objects
        .iter()
        .map(|o| {
            (
                text(&o["kind"], "kind").to_string(),
                text(&o["metadata"]["name"], "name").to_string(),
            )
        })
        .collect();
    for (kind, name) in [
        ("ConfigMap", "paygate-routes"),
        ("Deployment", "paygate"),
        ("Service", "paygate"),
        ("Service", "paygate-admin"),
        ("PodDisruptionBudget", "paygate"),
        ("HorizontalPodAutoscaler", "paygate"),
    ] {
        assert!(
            names.contains(&(kind.to_string(), name.to_string())),
            "kustomize output lacks {kind} {name}: {names:?}"
        );
    }
    assert!(
        !names.iter().any(|(kind, _)| kind == "Secret"),
        "kubectl apply -k must not carry the Secret template"
    );
    for object in &objects {
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(),
            Some("paygate"),
            "the kustomization's common label on {:?}",
            object["metadata"]["name"]
        );
    }
    let deployment = objects
        .iter()
        .find(|o| {
            o["kind"].as_str() == Some("Deployment")
                && o["metadata"]["name"].as_str() == Some("paygate")
        })
        .expect("Deployment paygate");
    let container = &items(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    )[0];
    assert_eq!(
        container["image"].as_str(),
        Some("paygate:dev"),
        "the kustomization's image"
    );
    assert!(
        selects(
            &deployment["spec"]["selector"]["matchLabels"],
            pod_labels(deployment)
        ),
        "the rendered selector still picks the pods"
    );

    // The ConfigMap is what kubectl itself builds from the routes file.
    let generated = kubectl(&[
        "create",
        "configmap",
        "paygate-routes",
        &format!("--from-file=routes.toml={ROUTES}"),
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert!(
        generated.status.success(),
        "kubectl create configmap:\n{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let generated: Value =
        serde_norway::from_slice(&generated.stdout).expect("kubectl's ConfigMap parses");
    let committed = k8s_object("ConfigMap", "paygate-routes");
    assert_eq!(
        generated["data"], committed["data"],
        "configmap.yaml is not what kubectl makes of {ROUTES}"
    );
}

// --- docker compose ----------------------------------------------------------------------------

fn compose_services() -> serde_norway::Mapping {
    yaml(COMPOSE)["services"]
        .as_mapping()
        .expect("services")
        .clone()
}

fn service<'a>(services: &'a serde_norway::Mapping, name: &str) -> &'a Value {
    services
        .get(name)
        .unwrap_or_else(|| panic!("compose has no service {name}"))
}

/// A long-form `depends_on` entry's condition.
fn dependency(service: &Value, on: &str) -> Option<String> {
    service["depends_on"][on]["condition"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn compose_runs_two_replicas_behind_a_balancer_with_their_stores_and_monitoring() {
    let services = compose_services();
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for name in [
        "paygate-1",
        "paygate-2",
        "lb",
        "redis",
        "postgres",
        "prometheus",
        "grafana",
    ] {
        assert!(
            names.contains(name),
            "compose service {name} missing: {names:?}"
        );
    }
    for name in &names {
        assert!(
            service(&services, name)["healthcheck"]["test"].is_sequence(),
            "{name} has no healthcheck"
        );
    }
    let channels = channel_hosts();
    for replica in ["paygate-1", "paygate-2"] {
        let gateway = service(&services, replica);
        assert_eq!(
            items(&gateway["command"], "command")[0].as_str(),
            Some("serve")
        );
        let mounts: Vec<&str> = items(&gateway["volumes"], "volumes")
            .iter()
            .map(|v| text(v, "volume"))
            .collect();
        assert!(
            mounts.contains(&format!("../routes.cluster.toml:{ROUTES_IN_CONTAINER}:ro").as_str()),
            "{replica} mounts {ROUTES} read-only at {ROUTES_IN_CONTAINER}: {mounts:?}"
        );
        assert_eq!(
            gateway["environment"]["PAYGATE_CONFIG"].as_str(),
            Some(ROUTES_IN_CONTAINER)
        );
        for name in gateway_variables() {
            let value = gateway["environment"][name.as_str()]
                .as_str()
                .unwrap_or_else(|| panic!("{replica} does not set {name}"));
            assert!(
                value.contains("${"),
                "{replica}: {name} is written in the file instead of taken from .env"
            );
        }
        for needed in ["redis", "postgres"]
            .into_iter()
            .chain(channels.iter().map(|(h, _)| h.as_str()))
        {
            assert_eq!(
                dependency(gateway, needed).as_deref(),
                Some("service_healthy"),
                "{replica} waits for {needed}"
            );
        }
        assert!(
            gateway["ports"].as_sequence().is_none_or(|ports| ports
                .iter()
                .all(|p| { text(p, "port").starts_with("127.0.0.1:") })),
            "{replica} publishes a port beyond 127.0.0.1"
        );
    }
    let lb = service(&services, "lb");
    for replica in ["paygate-1", "paygate-2"] {
        assert_eq!(
            dependency(lb, replica).as_deref(),
            Some("service_healthy"),
            "lb waits for {replica}"
        );
    }
    assert_eq!(
        dependency(service(&services, "grafana"), "prometheus").as_deref(),
        Some("service_healthy")
    );

    // The simulators listen where the channels point (compose service name = URL host).
    for (host, port) in channels {
        let simulator = service(&services, &host);
        let words = items(&simulator["command"], "command")
            .iter()
            .map(|w| text(w, "command word"));
        assert_eq!(
            mock_psp_listen(words),
            port,
            "{host}: --listen against the channel URL"
        );
    }

    // No secret in the files: every variable of .env.example is a placeholder.
    for line in read("deploy/compose/.env.example")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (name, value) = line.split_once('=').expect("NAME=VALUE");
        assert_eq!(
            value, PLACEHOLDER,
            ".env.example: {name} must be a placeholder"
        );
    }
}

#[test]
fn compose_config_validates_where_docker_compose_exists() {
    if !tool_exists("docker", &["compose", "version"]) {
        // The development machines have a docker client without the compose plugin (and no
        // engine): the compose file is checked by the parse in the test above.
        notice(
            "`docker compose` is not available: deploy/compose/compose.yaml was checked by its YAML parse only",
        );
        return;
    }
    let mut command = Command::new("docker");
    command
        .args(["compose", "-f", COMPOSE, "config", "--quiet"])
        .current_dir(root());
    for line in read("deploy/compose/.env.example")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let (name, value) = line.split_once('=').expect("NAME=VALUE");
        command.env(name, value);
    }
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "docker compose config:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The port of `default-server ... check port N` in the HAProxy config.
fn haproxy_check_port(config: &str) -> u16 {
    let line = config
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("default-server") && l.contains(" check "))
        .expect("default-server ... check");
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "port").expect("check port");
    words[at + 1].parse().expect("check port number")
}

#[test]
fn load_balancer_sends_to_both_replicas_on_readiness() {
    let ports = ports();
    let config = read(HAPROXY);
    let lines: Vec<&str> = config
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let servers: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("server "))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .expect("server address")
                .to_string()
        })
        .collect();
    let expected: BTreeSet<String> = ["paygate-1", "paygate-2"]
        .iter()
        .map(|r| format!("{r}:{}", ports.merchant))
        .collect();
    assert_eq!(
        servers, expected,
        "HAProxy servers against the compose replicas and the merchant port"
    );
    assert!(
        lines.contains(&"option httpchk"),
        "HAProxy checks the replicas over HTTP"
    );
    assert_eq!(
        haproxy_check_port(&config),
        ports.admin,
        "HAProxy checks the admin port"
    );
    let bind = lines
        .iter()
        .find_map(|l| l.strip_prefix("bind :"))
        .expect("frontend bind");
    let services = compose_services();
    let published: Vec<&str> = items(&service(&services, "lb")["ports"], "lb ports")
        .iter()
        .map(|p| text(p, "port"))
        .collect();
    assert!(
        published.contains(&format!("{bind}:{bind}").as_str()),
        "lb publishes its merchant frontend :{bind}"
    );
    // Resending a request the replica may have received could charge twice.
    for line in lines.iter().filter(|l| l.starts_with("retry-on")) {
        assert_eq!(
            *line, "retry-on conn-failure",
            "HAProxy must retry only connections that failed"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("shutdown-sessions")),
        "a replica marked down keeps its in-flight payments"
    );

    if !tool_exists("haproxy", &["-v"]) {
        notice(
            "haproxy is not installed: deploy/compose/haproxy.cfg was checked by the reading above only",
        );
        return;
    }
    let output = run(Command::new("haproxy")
        .args(["-c", "-f", HAPROXY])
        .current_dir(root()));
    assert!(
        output.status.success(),
        "haproxy -c:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// --- Prometheus and Grafana --------------------------------------------------------------------

/// Targets of the scrape job `job` in a Prometheus config.
fn scrape_targets(config: &Value, job: &str) -> BTreeSet<String> {
    let job = items(&config["scrape_configs"], "scrape_configs")
        .iter()
        .find(|j| j["job_name"].as_str() == Some(job))
        .unwrap_or_else(|| panic!("no scrape job {job}"));
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    items(&job["static_configs"], "static_configs")
        .iter()
        .flat_map(|s| items(&s["targets"], "targets"))
        .map(|t| text(t, "target").to_string())
        .collect()
}

/// The container path a compose service mounts `source` at.
fn mount_target(service: &Value, source: &str) -> String {
    items(&service["volumes"], "volumes")
        .iter()
        .map(|v| text(v, "volume"))
        .find_map(|v| v.strip_prefix(&format!("{source}:")))
        .map(|rest| rest.trim_end_matches(":ro").to_string())
        .unwrap_or_else(|| panic!("{source} is not mounted"))
}

#[test]
fn prometheus_scrapes_both_replicas_and_loads_the_alerts() {
    let ports = ports();
    let config = yaml(COMPOSE_PROMETHEUS);
    let expected: BTreeSet<String> = ["paygate-1", "paygate-2"]
        .iter()
        .map(|r| format!("{r}:{}", ports.admin))
        .collect();
    // Job "paygate": the alerts select up{job="paygate"}.
    assert_eq!(
        scrape_targets(&config, "paygate"),
        expected,
        "scrape targets of job paygate"
    );
    let services = compose_services();
    let prometheus = service(&services, "prometheus");
    let rules: Vec<&str> = items(&config["rule_files"], "rule_files")
        .iter()
        .map(|r| text(r, "rule file"))
        .collect();
    assert_eq!(
        rules,
        [mount_target(prometheus, "../prometheus/alerts.yml")],
        "rule_files is where compose mounts alerts.yml"
    );
    assert_eq!(
        mount_target(prometheus, "./prometheus.yml"),
        "/etc/prometheus/prometheus.yml"
    );
    // The single-node example keeps scraping the admin listener.
    let example = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(scrape_targets(&example, "paygate").len(), 1);
}

#[test]
fn alerts_watch_config_versions_and_redis_per_replica() {
    let rules = yaml("deploy/prometheus/alerts.yml");
    let alerts: BTreeMap<String, Value> = items(&rules["groups"], "groups")
        .iter()
        .flat_map(|g| items(&g["rules"], "rules"))
        .filter(|r| r["alert"].is_string())
        .map(|r| (text(&r["alert"], "alert").to_string(), r.clone()))
        .collect();
    let readme = read("deploy/prometheus/README.md");
    for (name, rule) in &alerts {
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
        let runbook = text(&rule["annotations"]["runbook"], "runbook");
        let anchor = runbook.split_once('#').expect("runbook anchor").1;
        assert!(
            readme.contains(&format!("### {name}")) && anchor == name.to_lowercase(),
            "{name}: runbook {runbook}"
        );
    }
    let expr = |name: &str| {
        text(
            &alerts.get(name).unwrap_or_else(|| panic!("alert {name}"))["expr"],
            "expr",
        )
        .to_string()
    };
    let mismatch = expr("PaygateConfigVersionMismatch");
    assert!(
        mismatch.contains("count by (job, version) (paygate_config_info"),
        "{mismatch}"
    );
    for name in ["PaygateClusterRedisErrors", "PaygateClusterRedisDown"] {
        assert!(
            expr(name).contains("rate(paygate_cluster_errors_total[5m])"),
            "{name}"
        );
    }
    assert!(expr("PaygateClusterRedisErrors").contains("by (job, instance, feature)"));

    if !tool_exists("promtool", &["--version"]) {
        notice(
            "promtool is not installed (.ci/promtool.sh installs it): rules checked by their parse only",
        );
        return;
    }
    for args in [
        vec!["check", "rules", "deploy/prometheus/alerts.yml"],
        vec!["check", "config", "--syntax-only", COMPOSE_PROMETHEUS],
        vec!["test", "rules", "deploy/prometheus/cluster_alerts_test.yml"],
    ] {
        let output = run(Command::new("promtool").args(&args).current_dir(root()));
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn grafana_is_provisioned_with_the_dashboard_and_its_per_instance_views() {
    let services = compose_services();
    let grafana = service(&services, "grafana");
    assert_eq!(
        mount_target(grafana, "../grafana/provisioning"),
        "/etc/grafana/provisioning"
    );

    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let datasource = &items(&datasources["datasources"], "datasources")[0];
    assert_eq!(datasource["type"].as_str(), Some("prometheus"));
    assert_eq!(
        datasource["isDefault"].as_bool(),
        Some(true),
        "the dashboard's variable picks the default"
    );
    let url: http::Uri = text(&datasource["url"], "url")
        .parse()
        .expect("datasource url");
    assert!(
        names_a_service(&services, url.host().expect("host")),
        "datasource host is a compose service"
    );
    assert_eq!(url.port_u16(), Some(9090));

    let providers = yaml("deploy/grafana/provisioning/dashboards/paygate.yml");
    let folder = text(
        &items(&providers["providers"], "providers")[0]["options"]["path"],
        "path",
    );
    let mounted = mount_target(grafana, "../grafana/paygate.json");
    assert_eq!(
        Path::new(&mounted).parent(),
        Some(Path::new(folder)),
        "the provider reads where compose mounts paygate.json"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/paygate.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: Vec<u64> = panels
        .iter()
        .map(|p| p["id"].as_u64().expect("panel id"))
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "panel ids are unique"
    );
    assert_no_overlap(panels);
    let exprs = |panel: &serde_json::Value| -> Vec<String> {
        panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str().map(str::to_string))
            .collect()
    };
    let by_instance: Vec<String> = panels
        .iter()
        .flat_map(exprs)
        .filter(|e| e.contains("by (instance"))
        .collect();
    for metric in [
        "paygate_http_requests_total",
        "paygate_http_request_duration_seconds_bucket",
        "paygate_config_info",
        "paygate_cluster_errors_total",
    ] {
        assert!(
            by_instance.iter().any(|e| e.contains(metric)),
            "no per-instance panel on {metric}"
        );
    }
    // The panels that were there before the per-instance views.
    for title in [
        "Payments / s",
        "Channel state",
        "Active config version",
        "Process memory",
    ] {
        assert!(
            panels.iter().any(|p| p["title"] == title),
            "panel {title:?} is gone"
        );
    }
}

fn names_a_service(services: &serde_norway::Mapping, host: &str) -> bool {
    services.keys().any(|k| k.as_str() == Some(host))
}

/// No two panels share a cell of Grafana's 24-column grid.
fn assert_no_overlap(panels: &[serde_json::Value]) {
    let boxes: Vec<(u64, [u64; 4])> = panels
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| {
                g[k].as_u64()
                    .unwrap_or_else(|| panic!("gridPos.{k} of panel {}", p["id"]))
            };
            (
                p["id"].as_u64().unwrap_or_default(),
                [n("x"), n("y"), n("w"), n("h")],
            )
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in boxes.iter().enumerate() {
        assert!(ax + aw <= 24, "panel {a} runs past column 24");
        for (b, [bx, by, bw, bh]) in &boxes[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            assert!(apart, "panels {a} and {b} overlap");
        }
    }
}

// --- the README --------------------------------------------------------------------------------

#[test]
fn deploy_readme_names_every_file() {
    let readme = read("deploy/README.md");
    for file in deploy_files() {
        let relative = file.strip_prefix("deploy/").expect("under deploy/");
        if relative == "README.md" {
            continue;
        }
        assert!(
            readme.contains(&format!("`{relative}`")),
            "deploy/README.md does not describe `{relative}`"
        );
    }
}

// --- the cluster routes file, served --------------------------------------------------------

/// The machine's PostgreSQL (trust auth) and Redis, as tests/cluster_journal.rs uses them;
/// `.ci/run` starts both when they are down.
const LOCAL_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const LOCAL_REDIS: &str = "127.0.0.1:6379";

fn require(service: &str, addr: &str) {
    let up = std::net::TcpStream::connect_timeout(
        &addr.parse().expect("address"),
        Duration::from_secs(1),
    )
    .is_ok();
    assert!(up, "{service} is not running on {addr}: .ci/run starts it");
}

/// Drops the test's journal schema when the test ends, passed or not.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(mut client) = postgres::Client::connect(LOCAL_POSTGRES_URL, postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        })
        .join();
    }
}

/// Replaces `from` (which must occur exactly once) by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{ROUTES}: {from:?} once");
    text.replacen(from, to, 1)
}

/// `deploy/routes.cluster.toml` as shipped, on two replicas at once, with only what a
/// single test machine needs changed: both listeners on 127.0.0.1 port 0, the channels on
/// two simulators started here, Redis and PostgreSQL on 127.0.0.1, a journal schema and key
/// prefix of the test's own, and a Redis timeout for a loaded machine. The merchant, rules,
/// fail policies and `url = "env:PAYGATE_JOURNAL_URL"` are the file's.
#[tokio::test]
async fn the_cluster_routes_file_serves_on_two_replicas_sharing_one_journal() {
    require("PostgreSQL", "127.0.0.1:5432");
    require("Redis", LOCAL_REDIS);
    let sim_a = Process::mock_psp(&["--name", "psp_a", "--success-rate", "1"]).await;
    let sim_b = Process::mock_psp(&["--name", "psp_b", "--success-rate", "1"]).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let schema = Schema(format!("deploy{}_{nanos}", std::process::id()));

    let ports = ports();
    let mut text = read(ROUTES);
    for (from, to) in [
        (
            format!("listen = \"0.0.0.0:{}\"", ports.merchant),
            "listen = \"127.0.0.1:0\"".to_string(),
        ),
        (
            format!("admin_listen = \"0.0.0.0:{}\"", ports.admin),
            "admin_listen = \"127.0.0.1:0\"".to_string(),
        ),
        (
            "url = \"http://psp-a:9101\"".into(),
            format!("url = \"{}\"", sim_a.base),
        ),
        (
            "url = \"http://psp-b:9101\"".into(),
            format!("url = \"{}\"", sim_b.base),
        ),
        (
            "redis_url = \"redis://redis:6379\"".into(),
            format!("redis_url = \"redis://{LOCAL_REDIS}\""),
        ),
        (
            "key_prefix = \"paygate:\"".into(),
            format!("key_prefix = \"{}:\"", schema.0),
        ),
        // tests/cluster_journal.rs does the same: 50 ms is tight while tests build beside.
        ("timeout_ms = 50 ".into(), "timeout_ms = 1000 ".into()),
        (
            "url = \"env:PAYGATE_JOURNAL_URL\"".into(),
            format!(
                "url = \"env:PAYGATE_JOURNAL_URL\"\nschema = \"{}\"",
                schema.0
            ),
        ),
    ] {
        text = replace_once(&text, &from, &to);
    }
    let env = [
        ("PAYGATE_JOURNAL_URL", LOCAL_POSTGRES_URL),
        ("PSP_A_AUTH", "Bearer test-a"),
        ("PSP_B_AUTH", "Bearer test-b"),
        ("PAYGATE_ADMIN_TOKEN", "test-admin-token"),
        ("PAYGATE_FINGERPRINT_KEY", "test-fingerprint-key"),
    ];
    let first = Process::gateway_with_env(&text, &env).await;
    let second = Process::gateway_with_env(&text, &env).await;

    for replica in [&first, &second] {
        let ready = try_send(Method::GET, &format!("{}/readyz", replica.admin), &[], "")
            .await
            .expect("GET /readyz");
        assert_eq!(ready.status, http::StatusCode::OK, "{}", ready.json);
        assert_eq!(
            ready.json["status"], "ready",
            "Redis and the journal answer"
        );
    }
    // The demo merchant pays on one replica (rule eu-cards) and reads it on the other.
    let paid = pay(&first, &card_payment(1_999, "EUR")).await;
    assert_eq!(paid.status, http::StatusCode::CREATED, "{}", paid.json);
    let id = paid.json["id"].as_str().expect("payment id");
    assert!(
        ["psp_a", "psp_b"].contains(&paid.json["channel"].as_str().unwrap_or_default()),
        "{}",
        paid.json
    );
    let read = get_payment(&second, KEY, id).await;
    assert_eq!(read.status, http::StatusCode::OK, "{}", read.json);
    assert_eq!(read.json["status"], paid.json["status"]);
    assert_eq!(read.json["channel"], paid.json["channel"]);
    let charged = sim_a.stats().await["payments"].as_u64().unwrap_or_default()
        + sim_b.stats().await["payments"].as_u64().unwrap_or_default();
    assert_eq!(charged, 1, "one payment reached one PSP");
}

// --- ConfigMap updates -------------------------------------------------------------------------

/// Lays out `folder` as kubelet lays out a ConfigMap volume: the data in a timestamped
/// folder, `..data` a symlink to it, `routes.toml` a symlink to `..data/routes.toml`. An
/// update writes a new timestamped folder, points `..data` at it by renaming a new symlink
/// over it, and deletes the old folder.
struct ConfigMapVolume {
    folder: PathBuf,
    current: Option<PathBuf>,
    revision: u32,
}

impl ConfigMapVolume {
    fn new(folder: PathBuf, routes: &str) -> Self {
        let mut volume = ConfigMapVolume {
            folder,
            current: None,
            revision: 0,
        };
        volume.update(routes);
        std::os::unix::fs::symlink("..data/routes.toml", volume.folder.join("routes.toml"))
            .expect("routes.toml symlink");
        volume
    }

    fn update(&mut self, routes: &str) {
        self.revision += 1;
        let data = self
            .folder
            .join(format!("..2026_01_01_00_00_0{}.000000001", self.revision));
        std::fs::create_dir(&data).expect("timestamped folder");
        std::fs::write(data.join("routes.toml"), routes).expect("write routes");
        let staged = self.folder.join("..data_tmp");
        std::os::unix::fs::symlink(data.file_name().expect("name"), &staged).expect("..data_tmp");
        std::fs::rename(&staged, self.folder.join("..data")).expect("swap ..data");
        if let Some(old) = self.current.replace(data) {
            std::fs::remove_dir_all(old).expect("remove the old folder");
        }
    }
}

/// kubelet's way of updating a mounted ConfigMap (a new timestamped folder, the `..data`
/// symlink swapped to it, the old folder deleted), three times over, on a running replica:
/// each update is reloaded from the file watch alone, without SIGHUP or `POST /admin/reload`.
#[tokio::test]
async fn every_configmap_update_reaches_a_running_replica() {
    let routes = |revision: u32| {
        format!(
            "# revision {revision}\n{}\n[[channels]]\nname = \"psp_a\"\nurl = \"sim://sim_a\"\n\n[[rules]]\nname = \"all\"\nchannels = [\"psp_a\"]\n\n[[simulators]]\nname = \"sim_a\"\n",
            base_config()
        )
    };
    let mut volume = ConfigMapVolume::new(scratch_dir(), &routes(1));
    let gateway = Process::gateway_in(&volume.folder.join("routes.toml")).await;
    let version = |text: String| {
        text.lines()
            .find_map(|l| l.strip_prefix("paygate_config_info{version=\""))
            .and_then(|l| l.split('"').next())
            .map(str::to_string)
            .expect("paygate_config_info")
    };
    let mut seen = vec![version(gateway.metrics().await)];
    for revision in 2..=4 {
        volume.update(&routes(revision));
        let mut now = seen.last().cloned().unwrap_or_default();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = version(gateway.metrics().await);
            if Some(&now) != seen.last() {
                break;
            }
        }
        assert_ne!(
            Some(&now),
            seen.last(),
            "ConfigMap update {} of 3 was not picked up (versions so far: {seen:?})",
            revision - 1
        );
        seen.push(now);
    }
}
