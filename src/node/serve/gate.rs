//! The socket under a connection's WebSocket: reads fail once a client has sent more than
//! [`MAX_PRE_HELLO_BYTES`] before its `hello` was accepted, so a stranger cannot make the node
//! buffer a frame of many MiB whatever size its header announces; and the places of
//! connections that have not said `hello` yet ([`PreHello`]), given back by the accepted hello.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;

use crate::protocol::MAX_PRE_HELLO_BYTES;

/// The bytes a client may still send before its `hello` is accepted; lifted by the accepted
/// hello. Shared by the connection and the socket's reader ([`Gated`]).
#[derive(Debug)]
pub(crate) struct HelloGate {
    left: AtomicI64,
    /// The connection's place among those that have not said hello, given back on `open`.
    waiting: parking_lot::Mutex<Option<Waiting>>,
}

impl HelloGate {
    /// A closed gate: [`MAX_PRE_HELLO_BYTES`] allowed.
    pub(crate) fn new() -> Arc<HelloGate> {
        Arc::new(HelloGate {
            left: AtomicI64::new(MAX_PRE_HELLO_BYTES as i64),
            waiting: parking_lot::Mutex::new(None),
        })
    }

    /// Keep `w` until the gate opens (or the connection ends).
    pub(crate) fn hold_until_open(&self, w: Option<Waiting>) {
        *self.waiting.lock() = w;
    }

    pub(crate) fn open(&self) {
        self.left.store(i64::MAX, Relaxed);
        self.waiting.lock().take();
    }

    /// True when the client sent more than it may before `hello`.
    pub(crate) fn exceeded(&self) -> bool {
        self.left.load(Relaxed) <= 0
    }
}

/// A socket whose reads fail once a closed [`HelloGate`] runs out: the WebSocket reader then
/// stops, however large a frame its header announced.
pub(crate) struct Gated<S> {
    inner: S,
    gate: Arc<HelloGate>,
}

impl<S> Gated<S> {
    /// `inner` behind `gate`.
    pub(crate) fn new(inner: S, gate: Arc<HelloGate>) -> Self {
        Gated { inner, gate }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.gate.exceeded() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "too many bytes before hello",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            let left = &self.gate.left;
            // Saturating: an open gate stays open.
            let _ = left.fetch_update(Relaxed, Relaxed, |v| {
                (v != i64::MAX).then_some(v - n as i64)
            });
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The upgraded socket a connection speaks over.
pub(crate) type Socket = WebSocketStream<Gated<TokioIo<hyper::upgrade::Upgraded>>>;

/// Upgraded connections that have not said `hello` yet, in all and per address: one stranger
/// opening upgrades and never saying hello took all the WebSocket slots before this (a token
/// holder got 503 on 10 of 12 tries).
#[derive(Debug)]
pub(crate) struct PreHello {
    max: usize,
    per_address: usize,
    /// Connections waiting, in all and per address.
    by_address: Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

/// An upgraded connection's place among those that have not said hello; given back by the
/// accepted hello (or the end of the connection).
#[derive(Debug)]
pub(crate) struct Waiting {
    of: Arc<PreHello>,
    addr: std::net::IpAddr,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut guard = self.of.by_address.lock();
        let (total, m) = &mut *guard;
        if let Some(n) = m.get_mut(&self.addr) {
            *total -= 1;
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

impl PreHello {
    pub(crate) fn new(max: usize) -> PreHello {
        PreHello {
            max,
            per_address: (max / 8).max(8),
            by_address: Mutex::default(),
        }
    }

    /// A place for a connection from `addr`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, addr: std::net::IpAddr) -> Result<Waiting, String> {
        let mut guard = self.by_address.lock();
        let (total, m) = &mut *guard;
        let mine = m.get(&addr).copied().unwrap_or(0);
        if *total >= self.max {
            return Err(format!("this node has {total} connections that have not said hello yet, its limit; retry later\n"));
        }
        if mine >= self.per_address {
            return Err(format!("{addr} has {mine} connections that have not said hello yet, the limit per address; send hello on those first\n"));
        }
        *m.entry(addr).or_insert(0) += 1;
        *total += 1;
        Ok(Waiting {
            of: self.clone(),
            addr,
        })
    }
}
