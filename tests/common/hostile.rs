//! A source on loopback that answers whatever a test scripts, down to raw bytes on the
//! socket: what a broken mirror, a captive portal or an attacker could send. axum cannot
//! send a short body, a reset or a non-HTTP answer; a plain TCP server can.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the source answers each request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// A complete HTTP/1.1 answer with a Content-Length.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A 200 in chunked encoding: no Content-Length for the client to check up front.
    Chunked { body: Vec<u8> },
    /// These bytes, whatever they are, then the connection closes.
    Raw(Vec<u8>),
    /// A 200 whose body trickles in one byte per `every`.
    SlowLoris { body: Vec<u8>, every: Duration },
    /// The request is read and never answered.
    Hang,
    /// The request is read and the connection reset (RST).
    Reset,
    /// A Content-Length of `declared` bytes, then `sent` (fewer) and the connection closes.
    ShortBody { declared: usize, sent: Vec<u8> },
}

impl Behavior {
    /// A 200 with `body` as JSON.
    pub fn ok(body: impl Into<Vec<u8>>) -> Behavior {
        Behavior::Http {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// `status` with an empty body and these headers.
    pub fn status(status: u16, headers: &[(&str, &str)]) -> Behavior {
        Behavior::Http {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }
}

/// The running source.
#[derive(Clone)]
pub struct HostileSource {
    /// `http://127.0.0.1:PORT/model_prices_and_context_window.json`.
    pub url: String,
    /// `http://127.0.0.1:PORT`, for redirects to other paths of the same source.
    pub base: String,
    behavior: Arc<Mutex<Behavior>>,
    /// Behaviors of other paths than [`HostileSource::url`]'s.
    paths: Arc<Mutex<HashMap<String, Behavior>>>,
    requests: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl HostileSource {
    /// Starts answering every request with `behavior`.
    pub async fn start(behavior: Behavior) -> HostileSource {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let source = HostileSource {
            url: format!("{base}/model_prices_and_context_window.json"),
            base,
            behavior: Arc::new(Mutex::new(behavior)),
            paths: Arc::default(),
            requests: Arc::default(),
            open: Arc::default(),
        };
        let serving = source.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let source = serving.clone();
                tokio::spawn(async move { source.answer(stream).await });
            }
        });
        source
    }

    /// Answers with `behavior` from now on.
    pub fn set(&self, behavior: Behavior) {
        *self.behavior.lock().unwrap() = behavior;
    }

    /// Answers requests for `path` (`/row-7`, say) with `behavior`; returns its URL.
    pub fn set_path(&self, path: &str, behavior: Behavior) -> String {
        self.paths.lock().unwrap().insert(path.to_owned(), behavior);
        format!("{}{path}", self.base)
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests read and not yet answered (hanging, trickling).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    async fn answer(&self, mut stream: TcpStream) {
        let Some(head) = read_request(&mut stream).await else {
            return;
        };
        self.requests.fetch_add(1, Ordering::SeqCst);
        // "GET /path HTTP/1.1"
        let path = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let scripted = self.paths.lock().unwrap().get(&path).cloned();
        let behavior = scripted.unwrap_or_else(|| self.behavior.lock().unwrap().clone());
        self.open.fetch_add(1, Ordering::SeqCst);
        let _open = Decrement(Arc::clone(&self.open));
        let _ = respond(&mut stream, behavior).await;
    }
}

struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads one request head (up to 64 KiB); None when the client went away first.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Some(head)
}

async fn respond(stream: &mut TcpStream, behavior: Behavior) -> std::io::Result<()> {
    match behavior {
        Behavior::Http {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
        }
        Behavior::Chunked { body } => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .await?;
            for chunk in body.chunks(64 * 1024) {
                stream
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                stream.write_all(chunk).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Behavior::Raw(bytes) => stream.write_all(&bytes).await?,
        Behavior::SlowLoris { body, every } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            for byte in body {
                stream.write_all(&[byte]).await?;
                tokio::time::sleep(every).await;
            }
        }
        Behavior::Hang => std::future::pending::<()>().await,
        Behavior::Reset => {
            // Linger 0: close sends RST instead of FIN (and so cannot block on drop, which
            // is what the deprecation warns of).
            #[allow(deprecated)]
            stream.set_linger(Some(Duration::ZERO))?;
        }
        Behavior::ShortBody { declared, sent } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&sent).await?;
        }
    }
    stream.flush().await
}
