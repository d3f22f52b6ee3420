//! Every file under `deploy/` runs here as written (issue 24, item 1): the command line or
//! script each one starts, with the files and environment it ships, against the built binary
//! (no container engine runs on this machine: the container's paths are mapped to temporary
//! directories, its port to a free one). Dockerfile, Dockerfile.litefs with hivesync-litefs
//! and litefs.yml, fly.toml, compose.nats.yml (with a real nats-server), hivesync.service,
//! config.toml, and the build context's .dockerignore.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The JSON array after `directive` in a Dockerfile (`ENTRYPOINT [...]`).
fn json_directive(dockerfile: &str, directive: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find(|l| l.starts_with(&format!("{directive} ")))
        .unwrap_or_else(|| panic!("no {directive}"));
    serde_json::from_str(line[directive.len()..].trim().trim_start_matches("CMD ")).unwrap()
}

/// Names and values, in order.
type Pairs = Vec<(String, String)>;

/// A Dockerfile's `ENV` settings and `COPY` destinations of repository files (dest -> source).
fn env_and_copies(dockerfile: &str) -> (Pairs, Pairs) {
    let joined = dockerfile.replace("\\\n", " ");
    let mut env = Vec::new();
    let mut copies = Vec::new();
    for l in joined.lines() {
        if let Some(rest) = l.strip_prefix("ENV ") {
            for kv in rest.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap();
                env.push((k.to_string(), v.to_string()));
            }
        }
        if let Some(rest) = l.strip_prefix("COPY ") {
            if !rest.starts_with("--from") {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                if parts[0] != "." {
                    assert!(
                        repo().join(parts[0]).exists(),
                        "COPY {}: no such file",
                        parts[0]
                    );
                    copies.push((parts[1].to_string(), parts[0].to_string()));
                }
            }
        }
    }
    (env, copies)
}

/// Container paths and ports as they are here.
struct Map {
    pairs: Vec<(String, String)>,
}

impl Map {
    fn apply(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (from, to) in &self.pairs {
            s = s.replace(from, to);
        }
        s
    }
}

async fn healthy(port: u16) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        if let Some((200, body)) = common::http_get(port, "/healthz").await {
            return serde_json::from_str(body.trim()).unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no /healthz on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Start the single-node image's entrypoint with its environment; returns it and its port.
fn run_image(dir: &Path, extra_env: &[(String, String)], port: Option<u16>) -> (Proc, u16) {
    let dockerfile = read("deploy/Dockerfile");
    let (env, copies) = env_and_copies(&dockerfile);
    let port = port.unwrap_or_else(common::free_port);
    let mut pairs: Vec<(String, String)> = copies
        .iter()
        .map(|(dest, src)| (dest.clone(), repo().join(src).display().to_string()))
        .collect();
    pairs.push(("/var/lib/hivesync".into(), dir.display().to_string()));
    pairs.push(("0.0.0.0:7070".into(), format!("127.0.0.1:{port}")));
    let map = Map { pairs };
    let entry = json_directive(&dockerfile, "ENTRYPOINT");
    assert_eq!(entry[0], "hivesync");
    let mut cmd = common::command();
    cmd.args(&entry[1..]);
    for (k, v) in env.iter().chain(extra_env) {
        cmd.env(k, map.apply(v));
    }
    let log = std::fs::File::create(dir.join("node.log")).unwrap();
    cmd.stdout(Stdio::null()).stderr(log);
    (Proc(cmd.spawn().unwrap()), port)
}

#[tokio::test]
async fn the_dockerfile_starts_as_written_and_its_health_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, port) = run_image(dir.path(), &[], None);
    let h = healthy(port).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert!(
        dir.path().join("hivesync.db").exists(),
        "the database is in the volume"
    );
    // The image's HEALTHCHECK, as written, against this port.
    let check = json_directive(
        &read("deploy/Dockerfile"),
        "HEALTHCHECK --interval=10s --timeout=3s --retries=3",
    );
    let script = check[2].replace(
        "/dev/tcp/127.0.0.1/7070",
        &format!("/dev/tcp/127.0.0.1/{port}"),
    );
    let st = Command::new(&check[0])
        .args([&check[1], &script])
        .status()
        .unwrap();
    assert!(st.success(), "the health check failed");
    // The default config is what the image ships, and it parses (no tokens: beyond loopback
    // every client is refused until some are added).
    hivesync::node::config::Config::parse(&read("deploy/config.toml")).unwrap();
    // The build context leaves out build outputs and databases.
    let ignore = read(".dockerignore");
    for p in ["target/", "**/*.db", "node_modules/", "deploy/secrets/"] {
        assert!(ignore.lines().any(|l| l == p), ".dockerignore lacks {p}");
    }
}

#[tokio::test]
async fn the_litefs_image_runs_its_primary_and_its_followers_and_fly_checks_them() {
    let dockerfile = read("deploy/Dockerfile.litefs");
    let (_, copies) = env_and_copies(&dockerfile);
    // LiteFS's config runs the entry script where the image puts it.
    let litefs = read("deploy/litefs.yml");
    let script_dest = copies
        .iter()
        .find(|(_, s)| s == "deploy/hivesync-litefs")
        .unwrap();
    assert!(
        litefs.contains(&format!("cmd: \"{}\"", script_dest.0)),
        "litefs.yml runs another path"
    );
    assert!(copies
        .iter()
        .any(|(d, s)| d == "/etc/litefs.yml" && s == "deploy/litefs.yml"));
    let fly = read("deploy/fly.toml");
    assert!(fly.contains("internal_port = 7070") && fly.contains("path = \"/healthz\""));
    assert!(fly.contains("Dockerfile.litefs") && fly.contains("FLY_CONSUL_URL"));
    let dir = tempfile::tempdir().unwrap();
    let (mnt, bin) = (dir.path().join("litefs"), dir.path().join("bin"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(common::bin(), bin.join("hivesync")).unwrap();
    let config = copies
        .iter()
        .find(|(d, _)| d == "/etc/hivesync/config.toml")
        .unwrap();
    for role in ["primary", "follower"] {
        let port = common::free_port();
        let map = Map {
            pairs: vec![
                ("/litefs".into(), mnt.display().to_string()),
                (
                    "/etc/hivesync/config.toml".into(),
                    repo().join(&config.1).display().to_string(),
                ),
                ("0.0.0.0:7070".into(), format!("127.0.0.1:{port}")),
            ],
        };
        let script = dir.path().join("entry.sh");
        std::fs::write(&script, map.apply(&read("deploy/hivesync-litefs"))).unwrap();
        if role == "follower" {
            std::fs::write(mnt.join(".primary"), "primary-host").unwrap();
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("sh")
            .arg(&script)
            .env("PATH", path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _p = Proc(child);
        // fly.toml's health check.
        let h = healthy(port).await;
        assert_eq!(h["read_only"], role == "follower", "{role}: {h}");
    }
}

#[tokio::test]
async fn the_systemd_unit_starts_as_written() {
    let unit = read("deploy/hivesync.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let map = Map {
        pairs: vec![
            ("/var/lib/hivesync".into(), dir.path().display().to_string()),
            (
                "/etc/hivesync/config.toml".into(),
                repo().join("deploy/config.toml").display().to_string(),
            ),
            ("0.0.0.0:7070".into(), format!("127.0.0.1:{port}")),
        ],
    };
    assert!(unit.contains("StateDirectory=hivesync"));
    let words: Vec<String> = map
        .apply(exec)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(words[0], "/usr/local/bin/hivesync");
    let child = common::command()
        .args(&words[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _p = Proc(child);
    assert_eq!(healthy(port).await["status"], "ok");
}

/// A compose service's `environment` and `secrets`, read line by line.
fn service(compose: &str, name: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut env = Vec::new();
    let mut secrets = Vec::new();
    let mut lines = compose
        .lines()
        .skip_while(|l| *l != format!("  {name}:"))
        .skip(1);
    let mut in_env = false;
    for l in lines.by_ref() {
        if !l.starts_with("    ") && !l.trim().is_empty() {
            break;
        }
        let t = l.trim();
        if t.starts_with('#') {
            continue;
        }
        if t == "environment:" {
            in_env = true;
            continue;
        }
        if let Some(s) = t.strip_prefix("secrets: [") {
            secrets = s
                .trim_end_matches(']')
                .split(',')
                .map(|s| s.trim().to_string())
                .collect();
        }
        if in_env && l.starts_with("      ") {
            let (k, v) = t.split_once(": ").unwrap();
            env.push((k.to_string(), v.to_string()));
        } else {
            in_env = false;
        }
    }
    (env, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_compose_file_runs_a_primary_nats_and_an_edge() {
    let compose = read("deploy/compose.nats.yml");
    let password = "test-pass-123";
    let nats_port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    // nats-server with the compose file's command line.
    let cmd_line = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("command: "))
        .unwrap()
        .replace("${NATS_PASSWORD:?set NATS_PASSWORD}", password);
    let args: Vec<String> = serde_json::from_str::<Vec<String>>(&cmd_line)
        .unwrap()
        .into_iter()
        .map(|a| {
            if a == "/data" {
                dir.path().join("nats").display().to_string()
            } else {
                a
            }
        })
        .collect();
    let nats_bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nats-server");
    let _nats = Proc(
        Command::new(nats_bin)
            .args(&args)
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (tests/run.sh installs it)"),
    );
    // The secrets, made as deploy/secrets/README.md says.
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let out = common::command().args(["token", "edge"]).output().unwrap();
    std::fs::write(secrets.join("primary.toml"), &out.stdout).unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    let token = err
        .split_whitespace()
        .find(|w| w.starts_with("hs_"))
        .unwrap();
    std::fs::write(secrets.join("edge-token"), token).unwrap();
    let secret_files = [
        ("/run/secrets/primary_config", secrets.join("primary.toml")),
        ("/run/secrets/edge_token", secrets.join("edge-token")),
    ];
    assert!(compose.contains("primary_config: { file: ./secrets/primary.toml }"));
    assert!(compose.contains("edge_token: { file: ./secrets/edge-token }"));
    let primary_port = common::free_port();
    let start = |name: &str| -> (Proc, u16) {
        let (env, _) = service(&compose, name);
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        let mut map = vec![
            (
                "${NATS_PASSWORD:?set NATS_PASSWORD}".to_string(),
                password.to_string(),
            ),
            ("@nats:4222".into(), format!("@127.0.0.1:{nats_port}")),
            ("primary:7070".into(), format!("127.0.0.1:{primary_port}")),
        ];
        for (c, f) in &secret_files {
            map.push((c.to_string(), f.display().to_string()));
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k, Map { pairs: map.clone() }.apply(&v)))
            .collect();
        run_image(&data, &env, (name == "primary").then_some(primary_port))
    };
    let (_primary, pport) = start("primary");
    let t0 = Instant::now();
    while healthy(pport).await["publish"]["connected"] != true {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the primary never reached NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_edge, eport) = start("edge");
    // A change at the primary reaches the edge through the stream.
    let db = dir.path().join("primary/hivesync.db");
    let out = common::cli(&db, &["put", "entity", r#"{"id":"ada","name":"Ada"}"#]);
    assert!(out.status.success());
    let t0 = Instant::now();
    loop {
        let h = healthy(eport).await;
        if h["upstream"]["applied"] == 1 && h["upstream"]["nats"] == true {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the edge did not follow: {h}\n{}",
            std::fs::read_to_string(dir.path().join("edge/node.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
