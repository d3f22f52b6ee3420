//! Convergence property test: random histories of writes and deletes across namespaces, made
//! over the socket and by an external writer (a second store on the same file, as another
//! process would), with replicas disconnecting and resuming at random, the log trimmed
//! mid-run (so some resumes need snapshots), and late joiners starting from a snapshot. At the
//! end every replica's digest equals the node's for the namespaces it follows.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hivesync::model::{Change, Kind, WriteOp};
use hivesync::node::{config::Config, NodeOptions};
use hivesync::protocol::{self, ClientMsg, ServerMsg, Subscribe};
use hivesync::query::ChangeFilter;
use hivesync::store::{Store, StoreOptions};
use proptest::prelude::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const NS: [&str; 3] = ["red", "green", "blue"];
const IDS: usize = 6;

#[derive(Clone, Debug)]
enum Step {
    /// Socket write of a few ops in one namespace.
    Write { ns: usize, ops: Vec<(bool, usize)> },
    /// A write by "another process" straight into the file.
    External { ns: usize, id: usize },
    /// Replica drops its connection.
    Disconnect(usize),
    /// Replica reconnects and resumes.
    Reconnect(usize),
    /// Trim the log to its last `keep` changes.
    Trim(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..NS.len(), prop::collection::vec((any::<bool>(), 0..IDS), 1..4)).prop_map(|(ns, ops)| Step::Write { ns, ops }),
        2 => (0..NS.len(), 0..IDS).prop_map(|(ns, id)| Step::External { ns, id }),
        2 => (0..3usize).prop_map(Step::Disconnect),
        2 => (0..3usize).prop_map(Step::Reconnect),
        1 => (0u8..4).prop_map(Step::Trim),
    ]
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A replica: an in-memory store kept in step with the node over the JSON protocol.
struct Replica {
    store: Store,
    namespaces: Vec<String>,
    ws: Option<Ws>,
    synced: bool,
    snapshot: Vec<Change>,
}

impl Replica {
    fn new(namespaces: Vec<String>) -> Replica {
        Replica {
            store: Store::open_in_memory(StoreOptions::default()).unwrap(),
            namespaces,
            ws: None,
            synced: false,
            snapshot: vec![],
        }
    }

    fn filter(&self) -> ChangeFilter {
        ChangeFilter {
            namespaces: Some(self.namespaces.clone()),
            kinds: None,
        }
    }

    async fn connect(&mut self, url: &str) {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let hello = ClientMsg::Hello {
            token: None,
            client: Some("convergence".into()),
        };
        ws.send(Message::Text(protocol::encode_client_json(&hello).into()))
            .await
            .unwrap();
        let from = if self.synced {
            Some(self.store.read(hivesync::apply::applied_seq).unwrap())
        } else {
            None
        };
        let sub = ClientMsg::Subscribe(Subscribe {
            sub: "r".into(),
            from,
            namespaces: Some(self.namespaces.clone()),
            kinds: None,
        });
        ws.send(Message::Text(protocol::encode_client_json(&sub).into()))
            .await
            .unwrap();
        self.snapshot.clear();
        self.ws = Some(ws);
    }

    /// Apply whatever has arrived, for up to `d`.
    async fn pump(&mut self, d: Duration) {
        let filter = self.filter();
        let Some(ws) = self.ws.as_mut() else { return };
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
            let Ok(Message::Text(t)) = msg else { continue };
            match protocol::decode_server_json(&t).unwrap() {
                ServerMsg::Snapshot { at, rows, done, .. } => {
                    self.snapshot.extend(rows);
                    if done {
                        let rows = std::mem::take(&mut self.snapshot);
                        let conn = self.store.pool().writer().unwrap();
                        hivesync::apply::apply_snapshot(&conn, &filter, at, &rows).unwrap();
                        self.synced = true;
                    }
                }
                ServerMsg::Changes { prev, changes, .. } => {
                    // A gap is a failure of the node: the replica never skips.
                    self.store.apply_changes(prev, &changes).unwrap();
                    self.synced = true;
                }
                ServerMsg::Error(e) => panic!("node error: {e:?}"),
                _ => {}
            }
        }
    }
}

fn run(steps: Vec<Step>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let store = Arc::new(Store::open(&db, StoreOptions::default()).unwrap());
        let external = Store::open(&db, StoreOptions::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let args = NodeOptions {
            upstream: None,
            poll_ms: Some(50),
            ..Default::default()
        };
        let node = hivesync::node::start(store.clone(), listener, Config::default(), None, &args)
            .await
            .unwrap();
        let url = format!("ws://{}/v1/sync", node.addr);
        let mut replicas = vec![
            Replica::new(vec!["red".into()]),
            Replica::new(vec!["green".into(), "blue".into()]),
            Replica::new(NS.iter().map(|s| s.to_string()).collect()),
        ];
        for r in &mut replicas {
            r.connect(&url).await;
        }
        let (mut writer, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let hello = ClientMsg::Hello {
            token: None,
            client: None,
        };
        writer
            .send(Message::Text(protocol::encode_client_json(&hello).into()))
            .await
            .unwrap();
        let mut req = 0;
        for s in &steps {
            match s {
                Step::Write { ns, ops } => {
                    req += 1;
                    let ops: Vec<WriteOp> = ops
                        .iter()
                        .map(|(del, id)| {
                            if *del {
                                WriteOp::delete(Kind::Entity, NS[*ns], format!("e{id}"))
                            } else {
                                WriteOp::upsert(
                                    Kind::Entity,
                                    NS[*ns],
                                    json!({"id": format!("e{id}"), "name": format!("w{req}")}),
                                )
                            }
                        })
                        .collect();
                    let m = ClientMsg::Write {
                        req: format!("w{req}"),
                        ops,
                        client: None,
                        n: None,
                        entries: None,
                    };
                    writer
                        .send(Message::Text(protocol::encode_client_json(&m).into()))
                        .await
                        .unwrap();
                }
                Step::External { ns, id } => {
                    external
                        .upsert(
                            Kind::Note,
                            NS[*ns],
                            json!({"id": format!("n{id}"), "content": "from outside"}),
                        )
                        .unwrap();
                }
                Step::Disconnect(i) => replicas[*i].ws = None,
                Step::Reconnect(i) => {
                    if replicas[*i].ws.is_none() {
                        replicas[*i].connect(&url).await;
                    }
                }
                Step::Trim(keep) => {
                    store.trim_changes(Some(*keep as u64), None).unwrap();
                }
            }
            for r in &mut replicas {
                r.pump(Duration::from_millis(3)).await;
            }
        }
        // Drain the writer's answers (every write must have been accepted).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut written = 0;
        while written < req {
            assert!(Instant::now() < deadline, "writes unanswered");
            let Some(Ok(Message::Text(t))) = writer.next().await else {
                panic!("writer closed")
            };
            match protocol::decode_server_json(&t).unwrap() {
                ServerMsg::Written { .. } => written += 1,
                ServerMsg::Error(e) => panic!("write refused: {e:?}"),
                _ => {}
            }
        }
        // A late joiner starts from a snapshot.
        let mut late = Replica::new(vec!["blue".into(), "red".into()]);
        late.connect(&url).await;
        replicas.push(late);
        for r in &mut replicas {
            if r.ws.is_none() {
                r.connect(&url).await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, r) in replicas.iter_mut().enumerate() {
            let ns = r.namespaces.clone();
            loop {
                r.pump(Duration::from_millis(50)).await;
                let want = store.digest(Some(&ns)).unwrap();
                let got = r.store.digest(Some(&ns)).unwrap();
                if want == got {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {i} ({ns:?}) did not converge: {got:?} vs {want:?}"
                );
            }
        }
        node.stop().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(steps in prop::collection::vec(step(), 5..60)) {
        run(steps);
    }
}
