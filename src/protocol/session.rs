//! The server session: the sans-I/O state machine of one connection.

use super::*;
use crate::model::{Origin, WriteOp};
use crate::query::ChangeFilter;

/// What the shell must do after a frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this message.
    Send(ServerMsg),
    /// Send `welcome` (the shell knows head and horizon).
    Welcome,
    /// Start a subscription. `filter.namespaces` is what the client asked for; `read` is the
    /// principal's scope, which every change must also pass.
    Subscribe {
        /// Subscription id.
        sub: String,
        /// Cursor (None: snapshot first).
        from: Option<i64>,
        /// Namespaces and kinds asked for.
        filter: ChangeFilter,
        /// What the principal may read.
        read: Scope,
    },
    /// Stop a subscription.
    Unsubscribe {
        /// Subscription id.
        sub: String,
    },
    /// Commit these ops and answer `written` or `error` with `req`.
    Write {
        /// Request id.
        req: String,
        /// The ops (already checked against the write scope).
        ops: Vec<WriteOp>,
        /// Who sent it, for an exactly-once upload (checked: both fields or neither).
        origin: Option<Origin>,
    },
    /// Record an acknowledgement.
    Ack {
        /// Subscription id.
        sub: String,
        /// Last seq applied.
        seq: i64,
    },
    /// The principal's read scope changed (a config reload): every subscription of the
    /// connection filters its next changes with this one.
    Rescope {
        /// What the principal may read now.
        read: Scope,
    },
    /// Fetch the authorizer's keys (a token names key `kid`, which it does not hold), then
    /// call [`Session::keys_ready`]: the token is judged then.
    RefreshKeys {
        /// The key id the token names.
        kid: String,
    },
    /// Close the connection (after sending what came before).
    Close {
        /// The WebSocket close code ([`CLOSE_POLICY`], [`CLOSE_INVALID_DATA`],
        /// [`CLOSE_TOO_BIG`]).
        code: u16,
        /// Why, for the close frame.
        reason: String,
    },
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    encoding: Encoding,
    principal: Option<Principal>,
    /// The token the principal was granted for, re-checked by [`Session::reauthorize`].
    token: Option<String>,
    subs: std::collections::HashSet<String>,
    /// A `hello` or `auth` token waiting for the shell's key refresh ([`Action::RefreshKeys`]).
    waiting: Option<Waiting>,
}

/// A token held while its keys are fetched.
#[derive(Debug)]
struct Waiting {
    token: Option<String>,
    /// An `auth` on an open connection (else the `hello`).
    renewal: bool,
}

/// The `req` of a write that did not decode, when it has a usable one.
fn req_of(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Req {
        #[serde(rename = "type")]
        ty: Option<String>,
        req: Option<String>,
    }
    let r: Req = serde_json::from_str(text).ok()?;
    let req = r.req.filter(|_| r.ty.as_deref() == Some("write"))?;
    check_client_id("req", &req).ok()?;
    Some(req)
}

fn err(code: ErrorCode, message: impl Into<String>) -> Action {
    Action::Send(ServerMsg::Error(ErrorMsg::new(code, message)))
}

/// WebSocket close code 1008: the client broke a rule (no or wrong credentials, no hello).
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code 1007: a text frame that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// WebSocket close code 1009: more bytes than allowed.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The error, then the close: what ends a connection on the client's fault.
fn fail_and_close(code: ErrorCode, message: String, close: u16, reason: &str) -> Vec<Action> {
    vec![
        err(code, message),
        Action::Close {
            code: close,
            reason: reason.into(),
        },
    ]
}

fn check_client_id(what: &str, id: &str) -> std::result::Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID {
        Err(format!("`{what}` must be 1 to {MAX_CLIENT_ID} bytes"))
    } else {
        Ok(())
    }
}

impl Session {
    /// A new connection speaking `encoding`.
    pub fn new(encoding: Encoding) -> Self {
        Session {
            encoding,
            principal: None,
            token: None,
            subs: Default::default(),
            waiting: None,
        }
    }

    /// When the connection's rights end (seconds since the Unix epoch): the shell ends the
    /// connection then with [`Session::on_expired`] unless a fresh token came.
    pub fn expires_at(&self) -> Option<i64> {
        self.principal.as_ref()?.expires
    }

    /// The shell's clock passed [`Session::expires_at`] (`now`, seconds since the epoch): the
    /// connection ends with `unauthorized` (nothing to do when a fresh token moved it on).
    pub fn on_expired(&mut self, now: i64) -> Vec<Action> {
        match self.expires_at() {
            Some(e) if now >= e => {
                self.principal = None;
                self.subs.clear();
                fail_and_close(
                    ErrorCode::Unauthorized,
                    "token expired: send a fresh one before it expires ({\"type\":\"auth\",\"token\":\"...\"}), or connect again with one".into(),
                    CLOSE_POLICY,
                    "token expired",
                )
            }
            _ => Vec::new(),
        }
    }

    /// The keys the shell fetched after [`Action::RefreshKeys`] are in: judge the waiting token.
    pub fn keys_ready(&mut self, auth: &dyn Authorizer) -> Vec<Action> {
        match self.waiting.take() {
            Some(Waiting {
                token,
                renewal: false,
            }) => self.hello_now(token, auth),
            Some(Waiting {
                token: Some(t),
                renewal: true,
            }) => self.renew_now(t, auth),
            _ => Vec::new(),
        }
    }

    /// Hold `token` for a key refresh when the authorizer lacks the key it names.
    fn needs_keys(
        &mut self,
        token: &Option<String>,
        renewal: bool,
        auth: &dyn Authorizer,
    ) -> Option<Vec<Action>> {
        let kid = auth.missing_key(token.as_deref()?)?;
        self.waiting = Some(Waiting {
            token: token.clone(),
            renewal,
        });
        Some(vec![Action::RefreshKeys { kid }])
    }

    /// The encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Who the client is, once `hello` succeeded.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Active subscription ids.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subs.iter().map(String::as_str)
    }

    /// The shell ended a subscription on its own (an error while serving it).
    pub fn subscription_ended(&mut self, sub: &str) {
        self.subs.remove(sub);
    }

    /// The node's tokens or scopes changed: check the principal again. A token no longer
    /// accepted ends the connection with `unauthorized`; a changed scope applies to the next
    /// write at once and, through [`Action::Rescope`], to the next change delivered.
    pub fn reauthorize(&mut self, auth: &dyn Authorizer) -> Vec<Action> {
        let Some(old) = &self.principal else {
            return Vec::new();
        };
        match auth.authenticate(self.token.as_deref()) {
            Ok(p) if p == *old => Vec::new(),
            Ok(p) => {
                let read = p.read.clone();
                self.principal = Some(p);
                vec![Action::Rescope { read }]
            }
            Err(AuthError(why)) => {
                self.principal = None;
                self.subs.clear();
                fail_and_close(
                    ErrorCode::Unauthorized,
                    format!("this connection's credentials are no longer accepted ({why}); the node's config changed"),
                    CLOSE_POLICY,
                    "unauthorized",
                )
            }
        }
    }

    /// A text frame arrived.
    pub fn on_text(&mut self, text: &str, auth: &dyn Authorizer) -> Vec<Action> {
        if self.encoding == Encoding::Bin {
            return vec![err(
                ErrorCode::BadRequest,
                "this connection speaks hivesync.v1.bin: send binary frames",
            )];
        }
        match decode_client_json(text) {
            Ok(m) => self.on_message(m, auth),
            Err(e) => {
                // A write refused for a malformed field still names its `req`, so a client with
                // writes in flight knows which one failed.
                let mut m = ErrorMsg::new(ErrorCode::BadRequest, e.to_string());
                m.req = req_of(text);
                vec![Action::Send(ServerMsg::Error(m))]
            }
        }
    }

    /// A binary frame arrived.
    pub fn on_binary(&mut self, bytes: &[u8], auth: &dyn Authorizer) -> Vec<Action> {
        if self.encoding.is_json() {
            return vec![err(
                ErrorCode::BadRequest,
                format!(
                    "this connection speaks {}: send text frames holding JSON",
                    self.encoding.name()
                ),
            )];
        }
        match decode_client_bin(bytes) {
            Ok(m) => self.on_message(m, auth),
            Err(e) => vec![err(ErrorCode::BadRequest, e.to_string())],
        }
    }

    /// A frame over [`MAX_FRAME_BYTES`] arrived (or began to): the stream cannot be trusted to
    /// resynchronise, so the connection ends.
    pub fn on_oversized(&mut self) -> Vec<Action> {
        fail_and_close(
            ErrorCode::TooLarge,
            format!("frame larger than {MAX_FRAME_BYTES} bytes; split the write into smaller ones"),
            CLOSE_POLICY,
            "frame too large",
        )
    }

    /// The client sent more than [`MAX_PRE_HELLO_BYTES`] before its `hello` was accepted.
    pub fn on_pre_hello_overflow(&mut self) -> Vec<Action> {
        fail_and_close(
            ErrorCode::TooLarge,
            format!("more than {MAX_PRE_HELLO_BYTES} bytes before hello: send {{\"type\":\"hello\",\"token\":\"...\"}} first"),
            CLOSE_TOO_BIG,
            "too many bytes before hello",
        )
    }

    /// No accepted `hello` within `secs` seconds of the upgrade (nothing to do once greeted).
    pub fn on_hello_timeout(&mut self, secs: u64) -> Vec<Action> {
        if self.principal.is_some() {
            return Vec::new();
        }
        fail_and_close(
            ErrorCode::BadRequest,
            format!(
                "no hello within {secs} s: send {{\"type\":\"hello\",\"token\":\"...\"}} first"
            ),
            CLOSE_POLICY,
            "no hello",
        )
    }

    /// A text frame that is not UTF-8: the stream is not what it claims, so it ends.
    pub fn on_invalid_utf8(&mut self) -> Vec<Action> {
        fail_and_close(
            ErrorCode::BadRequest,
            "invalid UTF-8 in a text frame".into(),
            CLOSE_INVALID_DATA,
            "invalid UTF-8 in a text frame",
        )
    }

    /// A decoded message.
    pub fn on_message(&mut self, m: ClientMsg, auth: &dyn Authorizer) -> Vec<Action> {
        if self.waiting.is_some() {
            return vec![err(
                ErrorCode::BadRequest,
                "the token is still being checked: wait for its answer before sending more",
            )];
        }
        let Some(p) = &self.principal else {
            return match m {
                ClientMsg::Hello { token, .. } => self.on_hello(token, auth),
                _ => vec![err(
                    ErrorCode::BadRequest,
                    "say hello first: {\"type\":\"hello\",\"token\":\"...\"}",
                )],
            };
        };
        match m {
            ClientMsg::Hello { .. } => vec![err(
                ErrorCode::BadRequest,
                "hello was already received on this connection",
            )],
            ClientMsg::Subscribe(s) => on_subscribe(&mut self.subs, s, p),
            ClientMsg::Write {
                req,
                ops,
                client,
                n,
                entries,
            } => on_write(req, ops, (client, n, entries), p),
            ClientMsg::Unsubscribe { sub } => self.on_unsubscribe(sub),
            ClientMsg::Ack { sub, seq } => self.on_ack(sub, seq),
            ClientMsg::Auth { token } => match self.needs_keys(&Some(token.clone()), true, auth) {
                Some(a) => a,
                None => self.renew_now(token, auth),
            },
        }
    }

    /// A fresh token on the open connection: its rights replace the connection's (a narrower
    /// read scope applies to the next change delivered); a refused one ends the connection.
    fn renew_now(&mut self, token: String, auth: &dyn Authorizer) -> Vec<Action> {
        match auth.authenticate(Some(&token)) {
            Ok(p) => {
                let rescope = self.principal.as_ref().is_none_or(|old| old.read != p.read);
                let read = p.read.clone();
                self.principal = Some(p);
                self.token = Some(token);
                if rescope {
                    vec![Action::Rescope { read }]
                } else {
                    Vec::new()
                }
            }
            Err(AuthError(why)) => {
                self.principal = None;
                self.subs.clear();
                fail_and_close(
                    ErrorCode::Unauthorized,
                    format!("the renewed token was refused ({why}); this connection ends"),
                    CLOSE_POLICY,
                    "unauthorized",
                )
            }
        }
    }

    fn on_hello(&mut self, token: Option<String>, auth: &dyn Authorizer) -> Vec<Action> {
        if let Some(a) = self.needs_keys(&token, false, auth) {
            return a;
        }
        self.hello_now(token, auth)
    }

    fn hello_now(&mut self, token: Option<String>, auth: &dyn Authorizer) -> Vec<Action> {
        match auth.authenticate(token.as_deref()) {
            Ok(p) => {
                self.principal = Some(p);
                self.token = token;
                vec![Action::Welcome]
            }
            Err(AuthError(why)) => {
                fail_and_close(ErrorCode::Unauthorized, why, CLOSE_POLICY, "unauthorized")
            }
        }
    }

    fn on_unsubscribe(&mut self, sub: String) -> Vec<Action> {
        if self.subs.remove(&sub) {
            vec![Action::Unsubscribe { sub }]
        } else {
            vec![Action::Send(ServerMsg::Error(ErrorMsg {
                code: ErrorCode::BadRequest,
                message: format!("no active subscription {sub:?}"),
                sub: Some(sub),
                req: None,
            }))]
        }
    }

    fn on_ack(&mut self, sub: String, seq: i64) -> Vec<Action> {
        if self.subs.contains(&sub) {
            vec![Action::Ack { sub, seq }]
        } else {
            vec![err(
                ErrorCode::BadRequest,
                format!("ack for unknown subscription {sub:?}"),
            )]
        }
    }
}

/// A subscription, checked against the connection's others and the principal's read scope.
fn on_subscribe(
    subs: &mut std::collections::HashSet<String>,
    s: Subscribe,
    p: &Principal,
) -> Vec<Action> {
    let fail = |code, message: String| {
        vec![Action::Send(ServerMsg::Error(ErrorMsg {
            code,
            message,
            sub: Some(s.sub.clone()),
            req: None,
        }))]
    };
    if let Err(e) = check_client_id("sub", &s.sub) {
        return fail(ErrorCode::BadRequest, e);
    }
    if subs.contains(&s.sub) {
        return fail(
            ErrorCode::BadRequest,
            format!(
                "subscription {:?} is already active; unsubscribe first",
                s.sub
            ),
        );
    }
    if subs.len() >= MAX_SUBS_PER_CONNECTION {
        return fail(
            ErrorCode::TooLarge,
            format!("at most {MAX_SUBS_PER_CONNECTION} subscriptions per connection"),
        );
    }
    if let Some(f) = s.from.filter(|&f| f < 0) {
        return fail(
            ErrorCode::BadRequest,
            format!("`from` must be 0 or more, got {f}"),
        );
    }
    if let Some(bad) = s.namespaces.iter().flatten().find(|n| !p.read.allows(n)) {
        return fail(
            ErrorCode::Forbidden,
            format!("token {:?} may not read namespace {bad:?}", p.name),
        );
    }
    subs.insert(s.sub.clone());
    vec![Action::Subscribe {
        sub: s.sub,
        from: s.from,
        filter: ChangeFilter {
            namespaces: s.namespaces,
            kinds: s.kinds,
        },
        read: p.read.clone(),
    }]
}

/// A write, checked against the limits and the principal's write scope.
fn on_write(
    req: String,
    ops: Vec<WriteOp>,
    origin: (Option<String>, Option<i64>, Option<Vec<u32>>),
    p: &Principal,
) -> Vec<Action> {
    let fail = |code, message: String| {
        vec![Action::Send(ServerMsg::Error(ErrorMsg {
            code,
            message,
            sub: None,
            req: Some(req.clone()),
        }))]
    };
    if let Err(e) = check_client_id("req", &req) {
        return fail(ErrorCode::BadRequest, e);
    }
    if ops.is_empty() {
        return fail(
            ErrorCode::BadRequest,
            "a write needs at least one op".into(),
        );
    }
    let origin = match origin {
        (None, None, None) => None,
        (Some(client), Some(n), entries) => {
            if let Err(e) = check_client_id("client", &client) {
                return fail(ErrorCode::BadRequest, e);
            }
            let origin = Origin {
                client,
                n,
                entries: entries.unwrap_or_default(),
                principal: (!p.write.is_all()).then(|| p.name.clone()),
            };
            if let Err(e) = origin.check(ops.len()) {
                return fail(ErrorCode::BadRequest, e);
            }
            Some(origin)
        }
        _ => {
            return fail(
                ErrorCode::BadRequest,
                "`client` and `n` go together: send both (an exactly-once upload) or neither"
                    .into(),
            )
        }
    };
    if ops.len() > MAX_OPS_PER_WRITE {
        return fail(
            ErrorCode::TooLarge,
            format!(
                "{} ops in one write; the limit is {MAX_OPS_PER_WRITE}",
                ops.len()
            ),
        );
    }
    if let Some((i, op)) = ops.iter().enumerate().find(|(_, o)| !p.write.allows(&o.ns)) {
        return fail(
            ErrorCode::Forbidden,
            format!(
                "op {i}: token {:?} may not write namespace {:?}",
                p.name, op.ns
            ),
        );
    }
    vec![Action::Write { req, ops, origin }]
}
