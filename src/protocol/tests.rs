use super::*;
use crate::model::Op;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn change(seq: i64, kind: Kind, emb: Option<Vec<f32>>) -> Change {
    Change {
        seq,
        tx: seq,
        ts: 1_764_213_000_123_456,
        ns: "default".into(),
        kind,
        op: Op::Upsert,
        id: "e\"1\u{263a}".into(),
        model: emb.as_ref().map(|_| "m".to_string()),
        data: Some(r#"{"id":"e\"1☺","name":"Ada"}"#.into()),
        embedding: emb,
    }
}

fn all_msgs() -> Vec<ServerMsg> {
    let rows = vec![
        change(5, Kind::Entity, None),
        change(6, Kind::Vector, Some(vec![0.25, -1.0])),
    ];
    let mut del = change(7, Kind::Edge, None);
    del.op = Op::Delete;
    del.data = None;
    vec![
        ServerMsg::Welcome {
            protocol: 1,
            node: "n".into(),
            head: 10,
            horizon: 1,
            publish_key: None,
        },
        ServerMsg::Snapshot {
            sub: "s1".into(),
            at: 10,
            rows: rows.clone(),
            done: true,
        },
        ServerMsg::Changes {
            sub: "s1".into(),
            prev: 4,
            changes: vec![rows[0].clone(), rows[1].clone(), del],
        },
        ServerMsg::Live {
            sub: "s1".into(),
            seq: 10,
        },
        ServerMsg::Written {
            req: "w1".into(),
            seq: 11,
        },
        ServerMsg::Error(ErrorMsg {
            code: ErrorCode::Forbidden,
            message: "no".into(),
            sub: Some("s1".into()),
            req: None,
        }),
    ]
}

#[test]
fn server_messages_roundtrip_in_both_encodings() {
    for m in all_msgs() {
        let text = encode_server_json(&m);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(v["type"].is_string(), "{text}");
        assert_eq!(decode_server_json(&text).unwrap(), m, "{text}");
        assert_eq!(decode_server_bin(&encode_server_bin(&m)).unwrap(), m);
        let b64 = encode_server_json_as(&m, VectorForm::Base64);
        assert_eq!(decode_server_json(&b64).unwrap(), m, "{b64}");
    }
}

#[test]
fn embeddings_go_as_base64_of_packed_f32_where_asked_and_either_form_decodes() {
    let text = encode_server_json_as(&all_msgs()[2], VectorForm::Base64);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // 0.25 and -1.0 as little-endian f32: 00 00 80 3e, 00 00 80 bf.
    assert_eq!(v["changes"][1]["data"]["embedding"], "AACAPgAAgL8=");
    assert_eq!(v["changes"][1]["model"], "m");
    // Only embeddings change: the other changes are the plain JSON encoding's.
    let plain: serde_json::Value =
        serde_json::from_str(&encode_server_json(&all_msgs()[2])).unwrap();
    assert_eq!(v["changes"][0], plain["changes"][0]);
    assert_eq!(v["changes"][2], plain["changes"][2]);
    // A hostile or broken embedding string is an error, not a panic.
    for bad in ["\"AACAPgAAgL\"", "\"!!!!\"", "\"AACA\"", "17"] {
        let t = text.replace("\"AACAPgAAgL8=\"", bad);
        assert!(decode_server_json(&t).is_err(), "{t}");
    }
    // Negotiation: offered first, chosen; a node that does not know it takes the next offer.
    assert_eq!(
        Encoding::negotiate([SUBPROTOCOL_JSON_B64, SUBPROTOCOL_JSON]),
        Some(Encoding::JsonB64)
    );
    assert_eq!(
        Encoding::negotiate(["hivesync.v1.json-zstd", SUBPROTOCOL_JSON]),
        Some(Encoding::Json)
    );
    assert_eq!(
        crate::model::embedding_from_base64(&crate::model::embedding_to_base64(&[
            1.5,
            f32::MIN_POSITIVE
        ]))
        .unwrap(),
        [1.5, f32::MIN_POSITIVE]
    );
}

#[test]
fn json_changes_follow_the_design_shape() {
    let text = encode_server_json(&all_msgs()[2]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "changes");
    assert_eq!(v["prev"], 4);
    assert_eq!(v["changes"][0]["data"]["name"], "Ada");
    assert_eq!(
        v["changes"][1]["data"]["embedding"],
        serde_json::json!([0.25, -1.0])
    );
    assert_eq!(v["changes"][1]["model"], "m");
    assert!(v["changes"][2]["data"].is_null());
}

#[test]
fn assembled_frames_equal_whole_encodings() {
    let ServerMsg::Changes { changes, .. } = &all_msgs()[2] else {
        unreachable!()
    };
    for enc in [Encoding::Json, Encoding::Bin, Encoding::JsonB64] {
        let parts: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| {
                let mut b = Vec::new();
                match enc.vectors() {
                    Some(form) => encode_change_json_as(&mut b, c, form),
                    None => encode_change_bin(&mut b, c),
                }
                b
            })
            .collect();
        let frame = changes_frame(enc, "s1", 4, parts.iter().map(|p| p.as_slice()));
        assert_eq!(frame, encode_server(enc, &all_msgs()[2]), "{enc:?}");
        // The catch-up path encodes straight into the frame: the same bytes.
        assert_eq!(
            changes_frame_of(enc, "s1", 4, changes.iter()),
            frame,
            "{enc:?}"
        );
    }
}

#[test]
fn client_messages_roundtrip_and_reject_junk() {
    let w = ClientMsg::Write {
        req: "w1".into(),
        ops: vec![WriteOp::upsert(
            Kind::Entity,
            "default",
            serde_json::json!({"name": "Ada", "n": 1.5}),
        )],
        client: None,
        n: None,
        entries: None,
    };
    assert_eq!(decode_client_bin(&encode_client_bin(&w)).unwrap(), w);
    assert_eq!(decode_client_json(&encode_client_json(&w)).unwrap(), w);
    // With an origin: a separate binary variant, so older nodes and clients are unaffected.
    let ClientMsg::Write { req, ops, .. } = w.clone() else {
        unreachable!()
    };
    let from = ClientMsg::Write {
        req,
        ops,
        client: Some("c1".into()),
        n: Some(3),
        entries: None,
    };
    assert_eq!(decode_client_bin(&encode_client_bin(&from)).unwrap(), from);
    assert_eq!(
        decode_client_json(&encode_client_json(&from)).unwrap(),
        from
    );
    assert_ne!(encode_client_bin(&from)[0], encode_client_bin(&w)[0]);
    assert!(!encode_client_json(&w).contains("client"));
    let s = decode_client_json(r#"{"type":"subscribe","sub":"s1","from":42,"namespaces":["default"],"kinds":["entity","note"]}"#).unwrap();
    assert!(matches!(
        s,
        ClientMsg::Subscribe(Subscribe { from: Some(42), .. })
    ));
    for (bad, want) in [
        ("{", "malformed JSON"),
        (r#"{"type":"teleport"}"#, "unknown message type"),
        (
            r#"{"type":"subscribe","sub":"s","kinds":["entity","persons"]}"#,
            "unknown kind: unknown variant `persons`",
        ),
        (
            r#"{"type":"write","req":"r","ops":[{"op":"upsert","kind":"entities","data":{}}]}"#,
            "unknown kind",
        ),
        (
            r#"{"type":"write","req":"r","ops":[{"op":"insert","kind":"entity","data":{}}]}"#,
            "unknown op",
        ),
        (r#"{"type":"hello","tokn":"x"}"#, "unknown field"),
        (r#"{"type":"ack","sub":"s"}"#, "missing field `seq`"),
        ("[]", "invalid"),
    ] {
        let e = decode_client_json(bad).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
    assert!(decode_client_bin(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    assert!(decode_client_bin(&[]).is_err());
}

struct Tokens;
impl Authorizer for Tokens {
    fn authenticate(&self, token: Option<&str>) -> std::result::Result<Principal, AuthError> {
        match token {
            Some("good") => Ok(Principal {
                name: "t".into(),
                read: Scope(vec!["a".into(), "team-*".into()]),
                write: Scope(vec!["a".into()]),
                expires: None,
            }),
            _ => Err(AuthError("unknown token".into())),
        }
    }
}

fn codes(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Send(ServerMsg::Error(e)) => format!("error:{:?}", e.code),
            Action::Close { .. } => "close".into(),
            Action::Welcome => "welcome".into(),
            Action::Subscribe { .. } => "subscribe".into(),
            Action::Write { .. } => "write".into(),
            Action::Unsubscribe { .. } => "unsubscribe".into(),
            Action::Ack { .. } => "ack".into(),
            Action::Rescope { .. } => "rescope".into(),
            Action::RefreshKeys { .. } => "refresh-keys".into(),
            Action::Send(_) => "send".into(),
        })
        .collect()
}

#[test]
fn session_enforces_hello_auth_and_scopes() {
    let mut s = Session::new(Encoding::Json);
    let sub =
        |ns: &str| format!(r#"{{"type":"subscribe","sub":"s1","from":0,"namespaces":["{ns}"]}}"#);
    assert_eq!(codes(&s.on_text(&sub("a"), &Tokens)), ["error:BadRequest"]);
    assert_eq!(
        codes(&s.on_text(r#"{"type":"hello","token":"bad"}"#, &Tokens)),
        ["error:Unauthorized", "close"]
    );
    assert_eq!(
        codes(&s.on_text(r#"{"type":"hello","token":"good"}"#, &Tokens)),
        ["welcome"]
    );
    assert_eq!(
        codes(&s.on_text(r#"{"type":"hello","token":"good"}"#, &Tokens)),
        ["error:BadRequest"]
    );
    assert_eq!(codes(&s.on_text(&sub("b"), &Tokens)), ["error:Forbidden"]);
    assert_eq!(codes(&s.on_text(&sub("team-x"), &Tokens)), ["subscribe"]);
    assert_eq!(
        codes(&s.on_text(&sub("a"), &Tokens)),
        ["error:BadRequest"],
        "duplicate sub id"
    );
    let w = |ns: &str| {
        format!(
            r#"{{"type":"write","req":"w","ops":[{{"op":"delete","kind":"entity","ns":"{ns}","id":"x"}}]}}"#
        )
    };
    assert_eq!(codes(&s.on_text(&w("a"), &Tokens)), ["write"]);
    assert_eq!(
        codes(&s.on_text(&w("team-x"), &Tokens)),
        ["error:Forbidden"]
    );
    assert_eq!(
        codes(&s.on_text(r#"{"type":"write","req":"w","ops":[]}"#, &Tokens)),
        ["error:BadRequest"]
    );
    assert_eq!(
        codes(&s.on_binary(&[1, 2, 3], &Tokens)),
        ["error:BadRequest"]
    );
    assert_eq!(codes(&s.on_text("not json", &Tokens)), ["error:BadRequest"]);
    assert_eq!(
        codes(&s.on_text(r#"{"type":"ack","sub":"s1","seq":3}"#, &Tokens)),
        ["ack"]
    );
    assert_eq!(
        codes(&s.on_text(r#"{"type":"unsubscribe","sub":"s1"}"#, &Tokens)),
        ["unsubscribe"]
    );
    assert_eq!(
        codes(&s.on_text(r#"{"type":"unsubscribe","sub":"s1"}"#, &Tokens)),
        ["error:BadRequest"]
    );
    assert_eq!(
        codes(&s.on_text(r#"{"type":"subscribe","sub":"s2","from":-1}"#, &Tokens)),
        ["error:BadRequest"]
    );
    assert_eq!(codes(&s.on_oversized()), ["error:TooLarge", "close"]);
}

#[test]
fn negotiation_defaults_to_json_and_refuses_strangers() {
    assert_eq!(Encoding::negotiate([]), Some(Encoding::Json));
    assert_eq!(
        Encoding::negotiate(["x", "hivesync.v1.bin"]),
        Some(Encoding::Bin)
    );
    assert_eq!(Encoding::negotiate(["graphql-ws"]), None);
}

#[test]
fn decodes_a_real_changes_frame() {
    let t = r#"{"type":"changes","sub":"watch","prev":5,"changes":[{"seq":6,"tx":6,"ts":1,"ns":"default","kind":"vector","op":"upsert","id":"babbage","model":"tiny","data":{"embedding":[0.9,0.1,0.0],"subject":"babbage","model":"tiny","kind":"person","created_at":1,"updated_at":1}}]}"#;
    decode_server_json(t).unwrap();
    let t = r#"{"type":"live","sub":"watch","seq":7}"#;
    decode_server_json(t).unwrap();
    let t =
        r#"{"type":"welcome","protocol":1,"node":"hivesync@127.0.0.1:7070","head":7,"horizon":1}"#;
    decode_server_json(t).unwrap();
}

/// Tokens whose scopes a test changes between calls, as a config reload does.
struct Mutable(std::cell::RefCell<Option<Principal>>);
impl Authorizer for Mutable {
    fn authenticate(&self, token: Option<&str>) -> std::result::Result<Principal, AuthError> {
        match (token, self.0.borrow().as_ref()) {
            (Some("t"), Some(p)) => Ok(p.clone()),
            _ => Err(AuthError("unknown token".into())),
        }
    }
}

#[test]
fn reauthorize_narrows_scopes_and_closes_revoked_tokens() {
    let p = |read: &[&str], write: &[&str]| Principal {
        name: "t".into(),
        read: Scope(read.iter().map(|s| s.to_string()).collect()),
        write: Scope(write.iter().map(|s| s.to_string()).collect()),
        expires: None,
    };
    let auth = Mutable(std::cell::RefCell::new(Some(p(&["*"], &["a", "b"]))));
    let mut s = Session::new(Encoding::Json);
    // Before hello there is nothing to re-check.
    assert!(s.reauthorize(&auth).is_empty());
    assert_eq!(
        codes(&s.on_text(r#"{"type":"hello","token":"t"}"#, &auth)),
        ["welcome"]
    );
    assert!(s.reauthorize(&auth).is_empty(), "unchanged config");
    let write_b = r#"{"type":"write","req":"r","ops":[{"op":"upsert","kind":"entity","ns":"b","data":{"name":"x"}}]}"#;
    assert_eq!(codes(&s.on_text(write_b, &auth)), ["write"]);
    // Narrowed: the next write is refused, and the shell is told the new read scope.
    *auth.0.borrow_mut() = Some(p(&["a"], &["a"]));
    assert_eq!(
        s.reauthorize(&auth),
        [Action::Rescope {
            read: Scope(vec!["a".into()])
        }]
    );
    assert_eq!(codes(&s.on_text(write_b, &auth)), ["error:Forbidden"]);
    // Removed: unauthorized, then close; nothing is accepted afterwards.
    *auth.0.borrow_mut() = None;
    assert_eq!(
        codes(&s.reauthorize(&auth)),
        ["error:Unauthorized", "close"]
    );
    assert_eq!(codes(&s.on_text(write_b, &auth)), ["error:BadRequest"]);
}

#[test]
fn prefix_scopes_are_plain_prefixes() {
    // The documented rule: `team*` is a plain prefix (it matches `teamsecret`); a separator
    // before the star scopes a group of namespaces.
    let plain = Scope(vec!["team*".into()]);
    assert!(plain.allows("team") && plain.allows("team-a") && plain.allows("teamsecret"));
    let grouped = Scope(vec!["team-*".into()]);
    assert!(grouped.allows("team-a") && grouped.allows("team-"));
    assert!(!grouped.allows("teamsecret") && !grouped.allows("team"));
}

#[test]
fn connection_faults_end_with_an_error_and_their_close_code() {
    let close_code = |acts: &[Action]| match acts {
        [Action::Send(ServerMsg::Error(_)), Action::Close { code, .. }] => *code,
        other => panic!("expected error + close, got {other:?}"),
    };
    let mut s = Session::new(Encoding::Json);
    assert_eq!(close_code(&s.on_invalid_utf8()), CLOSE_INVALID_DATA);
    assert_eq!(close_code(&s.on_pre_hello_overflow()), CLOSE_TOO_BIG);
    assert_eq!(close_code(&s.on_oversized()), CLOSE_POLICY);
    assert_eq!(close_code(&s.on_hello_timeout(10)), CLOSE_POLICY);
    // A refused hello closes with the policy code too.
    assert_eq!(
        close_code(&s.on_text(r#"{"type":"hello","token":"bad"}"#, &Tokens)),
        CLOSE_POLICY
    );
    // Once greeted, the hello deadline no longer applies.
    s.on_text(r#"{"type":"hello","token":"good"}"#, &Tokens);
    assert!(s.on_hello_timeout(10).is_empty());
}

/// The binary encoding is `ServerMsg`'s serde form: this pins its bytes, so reordering a
/// variant or a field (which would break every deployed client) fails here. The bytes were
/// produced by the hand-written mirrors this form replaced, and are equal.
#[test]
fn binary_server_messages_keep_their_bytes() {
    let hex: Vec<String> = all_msgs()
        .iter()
        .map(|m| {
            encode_server_bin(m)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    assert_eq!(hex, GOLDEN_BIN);
}

const GOLDEN_BIN: [&str; 6] = [
    "0001016e1402",
    "0102733114020a0a80d1f192dba2a2060764656661756c74000006652231e298ba00011d7b226964223a22655c2231e298ba222c226e616d65223a22416461227d000c0c80d1f192dba2a2060764656661756c74040006652231e298ba01016d011d7b226964223a22655c2231e298ba222c226e616d65223a22416461227d01020000803e000080bf01",
    "0202733108030a0a80d1f192dba2a2060764656661756c74000006652231e298ba00011d7b226964223a22655c2231e298ba222c226e616d65223a22416461227d000c0c80d1f192dba2a2060764656661756c74040006652231e298ba01016d011d7b226964223a22655c2231e298ba222c226e616d65223a22416461227d01020000803e000080bf0e0e80d1f192dba2a2060764656661756c74010106652231e298ba000000",
    "0302733114",
    "0402773116",
    "0501026e6f0102733100",
];

#[test]
fn json_server_messages_are_read_in_any_order_and_checked() {
    let m = decode_server_json(r#"{"seq":7,"sub":"s","type":"live"}"#).unwrap();
    assert_eq!(
        m,
        ServerMsg::Live {
            sub: "s".into(),
            seq: 7
        }
    );
    for (text, want) in [
        (r#"{"type":"live","sub":"s"}"#, "`live` without `seq`"),
        (
            r#"{"type":"live","sub":"s","seq":1,"x":1}"#,
            "unknown field `x`",
        ),
        (
            r#"{"type":"live","sub":"s","seq":1,"seq":2}"#,
            "duplicate field `seq`",
        ),
        (r#"{"sub":"s","seq":1}"#, "missing field `type`"),
        (r#"{"type":"hello"}"#, "unknown message type \"hello\""),
        (
            r#"{"type":"live","sub":"s","seq":1} x"#,
            "trailing characters",
        ),
        (r#"[1]"#, "expected a node message"),
        (
            r#"{"type":"changes","sub":"s","prev":0,"changes":[{"seq":1}]}"#,
            "missing field `tx`",
        ),
    ] {
        let e = decode_server_json(text).unwrap_err().to_string();
        assert!(e.contains("malformed message from node"), "{text}: {e}");
        assert!(e.contains(want), "{text}: {e}");
    }
    // An error without sub or req leaves both out.
    let e = encode_server_json(&ServerMsg::Error(ErrorMsg::new(
        ErrorCode::Internal,
        "x\"y",
    )));
    assert_eq!(e, r#"{"type":"error","code":"internal","message":"x\"y"}"#);
}

/// A node that publishes to NATS appends its publish key to the binary `welcome`: a decoder
/// that stops after the v1 fields (every older client) reads the same welcome as before, and
/// today's decoder reads the key; a welcome without one keeps its v1 bytes.
#[test]
fn a_binary_welcome_carries_the_publish_key_after_its_v1_fields() {
    let plain = ServerMsg::Welcome {
        protocol: 1,
        node: "n".into(),
        head: 10,
        horizon: 1,
        publish_key: None,
    };
    let keyed = ServerMsg::Welcome {
        protocol: 1,
        node: "n".into(),
        head: 10,
        horizon: 1,
        publish_key: Some("a2V5".into()),
    };
    let (old, new) = (encode_server_bin(&plain), encode_server_bin(&keyed));
    assert_eq!(old, [0x00, 0x01, 0x01, 0x6e, 0x14, 0x02]);
    assert_eq!(&new[..old.len()], &old[..]);
    // What a decoder that predates the key sees: postcard ignores the trailing bytes.
    let v1: ServerMsg = postcard::from_bytes(&new).unwrap();
    assert_eq!(v1, plain);
    assert_eq!(decode_server_bin(&new).unwrap(), keyed);
    assert_eq!(decode_server_bin(&old).unwrap(), plain);
    // Trailing bytes that are not a string are an error, not a panic.
    let mut bad = old.clone();
    bad.extend_from_slice(&[0x05, b'a']);
    assert!(decode_server_bin(&bad).is_err());
    // The JSON encodings never carry it.
    assert!(!encode_server_json(&keyed).contains("a2V5"));
}

/// Tokens named by their rights and expiry (`read-ns@exp`), some of whose keys must be fetched.
struct Jwts {
    missing: std::cell::RefCell<Option<String>>,
}
impl Authorizer for Jwts {
    fn authenticate(&self, token: Option<&str>) -> std::result::Result<Principal, AuthError> {
        let t = token.ok_or_else(|| AuthError("no token".into()))?;
        if self.missing.borrow().as_deref() == Some(t) {
            return Err(AuthError("no such key".into()));
        }
        let (ns, exp) = t.split_once('@').ok_or_else(|| AuthError("bad".into()))?;
        Ok(Principal {
            name: "jwt".into(),
            read: Scope(vec![ns.into()]),
            write: Scope(vec![ns.into()]),
            expires: exp.parse().ok(),
        })
    }

    fn missing_key(&self, token: &str) -> Option<String> {
        (self.missing.borrow().as_deref() == Some(token)).then(|| "k2".into())
    }
}

#[test]
fn a_renewed_token_replaces_the_rights_and_expiry_ends_the_connection() {
    let auth = Jwts {
        missing: Default::default(),
    };
    let mut s = Session::new(Encoding::Json);
    assert_eq!(
        codes(&s.on_text(r#"{"type":"auth","token":"a@100"}"#, &auth)),
        ["error:BadRequest"],
        "auth before hello"
    );
    assert_eq!(
        codes(&s.on_text(r#"{"type":"hello","token":"a@100"}"#, &auth)),
        ["welcome"]
    );
    assert_eq!(s.expires_at(), Some(100));
    assert!(s.on_expired(99).is_empty(), "not yet");
    // Renewed with the same rights: a later expiry, nothing else.
    assert!(s
        .on_text(r#"{"type":"auth","token":"a@200"}"#, &auth)
        .is_empty());
    assert_eq!(s.expires_at(), Some(200));
    assert!(s.on_expired(150).is_empty(), "the renewal moved it on");
    // Renewed with narrower (other) rights: the next frame is filtered by them.
    assert_eq!(
        s.on_text(r#"{"type":"auth","token":"b@300"}"#, &auth),
        [Action::Rescope {
            read: Scope(vec!["b".into()])
        }]
    );
    // Expired: unauthorized, then close, and nothing after.
    let acts = s.on_expired(300);
    assert_eq!(codes(&acts), ["error:Unauthorized", "close"]);
    assert!(format!("{acts:?}").contains("token expired"));
    assert_eq!(
        codes(&s.on_text(r#"{"type":"ack","sub":"s","seq":1}"#, &auth)),
        ["error:BadRequest"]
    );
    // A refused renewal ends the connection.
    let mut s = Session::new(Encoding::Json);
    s.on_text(r#"{"type":"hello","token":"a@100"}"#, &auth);
    assert_eq!(
        codes(&s.on_text(r#"{"type":"auth","token":"garbage"}"#, &auth)),
        ["error:Unauthorized", "close"]
    );
}

#[test]
fn a_token_whose_key_is_missing_waits_for_the_keys_and_nothing_else_runs_meanwhile() {
    let auth = Jwts {
        missing: std::cell::RefCell::new(Some("a@100".into())),
    };
    let mut s = Session::new(Encoding::Json);
    assert_eq!(
        s.on_text(r#"{"type":"hello","token":"a@100"}"#, &auth),
        [Action::RefreshKeys { kid: "k2".into() }]
    );
    // A frame while the keys are fetched is refused, not judged with the old keys.
    assert_eq!(
        codes(&s.on_text(r#"{"type":"ack","sub":"s","seq":1}"#, &auth)),
        ["error:BadRequest"]
    );
    // The fetch brought the key: the token is judged now.
    *auth.missing.borrow_mut() = None;
    assert_eq!(codes(&s.keys_ready(&auth)), ["welcome"]);
    // A fetch that did not bring it: refused (once; no second fetch).
    let mut s = Session::new(Encoding::Json);
    *auth.missing.borrow_mut() = Some("a@100".into());
    s.on_text(r#"{"type":"hello","token":"a@100"}"#, &auth);
    assert_eq!(codes(&s.keys_ready(&auth)), ["error:Unauthorized", "close"]);
    assert!(s.keys_ready(&auth).is_empty(), "nothing waits any more");
}
