//! COMPARISON PEER, not part of voucherd: hyper in front of redis-server.
//!
//! The usual flash-sale design, built as well as it is commonly built, so that
//! `loadtest compare` can quote voucherd against it on the same machine:
//! a hyper 1.x server (built like voucherd's listener) answers the same JSON
//! claim bodies by running one Lua script in a redis-server 7 that it starts on
//! a loopback port, in a temporary directory, with `--appendonly yes
//! --appendfsync always` (every write is fsynced before redis answers).
//!
//! The script, per claim: `SISMEMBER` dedupe on every identity key (with an
//! explicit `== 1`: in Lua a 0 is truthy), a stock check, `DECR`, `SADD` of
//! the keys, and `XADD` of the claim to a stream. The request body, the
//! answers and the HTTP side are `claim_api.rs`, shared with `postgres_claim`:
//! `201 claimed`, `409 already_claimed`, `410 sold_out`, `422 outside_area`.
//! Unlike voucherd it keeps no request-ID idempotency and shows no voucher on
//! a 409, which saves it work.
//!
//!     redis_claim --listen 127.0.0.1:18195 --geojson ../shared/data/yichang-420500.geojson \
//!         --tranche bench --quota-per-county 10000000

mod claim_api;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use voucherd::geo::PolygonIndex;

use claim_api::{Answer, Claim};

/// Longest wait for redis-server to accept connections.
const REDIS_START_DEADLINE: Duration = Duration::from_secs(20);
/// Largest redis reply accepted.
const MAX_REPLY_BYTES: usize = 1 << 20;

const CLAIM_SCRIPT: &str = r#"
local t = ARGV[1]
local county = ARGV[2]
local n = tonumber(ARGV[3])
local holders = 'holders:' .. t
for i = 1, n do
  if redis.call('SISMEMBER', holders, ARGV[3 + i]) == 1 then
    return {409}
  end
end
local stock_key = 'stock:' .. t .. ':' .. county
local stock = tonumber(redis.call('GET', stock_key))
if stock == nil then
  return {422}
end
if stock <= 0 then
  return {410}
end
redis.call('DECR', stock_key)
for i = 1, n do
  redis.call('SADD', holders, ARGV[3 + i])
end
local id = redis.call('XADD', 'claims:' .. t, '*', 'county', county, 'user', ARGV[4],
  'request', ARGV[4 + n], 'location', ARGV[5 + n])
return {201, id}
"#;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18195")]
    listen: SocketAddr,
    /// Loopback port for the redis-server this peer starts.
    #[arg(long, default_value_t = 18379)]
    redis_port: u16,
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    #[command(flatten)]
    tranche: claim_api::TrancheArgs,
}

struct Peer {
    index: PolygonIndex,
    tranche: String,
    redis: SocketAddr,
    script_sha: String,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let (index, counties) = claim_api::load_counties(&args.tranche.geojson)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = std::env::temp_dir().join(format!("redis-claim-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut redis = tokio::process::Command::new(&args.redis_server)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &args.redis_port.to_string(),
            ])
            .arg("--dir")
            .arg(&dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .kill_on_drop(true)
            .spawn()?;
        let redis_addr = SocketAddr::from(([127, 0, 0, 1], args.redis_port));
        let result = serve(&args, index, &counties, redis_addr).await;
        let _ = redis.kill().await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    })
}

async fn serve(
    args: &Args,
    index: PolygonIndex,
    counties: &[u32],
    redis_addr: SocketAddr,
) -> io::Result<()> {
    let mut setup = connect_redis(redis_addr).await?;
    let sha = match setup
        .call(&[b"SCRIPT", b"LOAD", CLAIM_SCRIPT.as_bytes()])
        .await?
    {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => return Err(redis_error(format!("SCRIPT LOAD: {other:?}"))),
    };
    setup.call(&[b"FLUSHALL"]).await?;
    for county in counties {
        let key = format!("stock:{}:{county}", args.tranche.tranche);
        setup
            .call(&[
                b"SET",
                key.as_bytes(),
                args.tranche.quota_per_county.to_string().as_bytes(),
            ])
            .await?;
    }
    let peer = Arc::new(Peer {
        index,
        tranche: args.tranche.tranche.clone(),
        redis: redis_addr,
        script_sha: sha,
    });
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "redis_claim listening {} (redis-server on {redis_addr}, appendfsync always)",
        listener.local_addr()?
    );
    claim_api::serve_until_signal(listener, || {
        let peer = peer.clone();
        // One redis connection per HTTP connection, opened on first use.
        let redis: Arc<Mutex<Option<RedisConnection>>> = Arc::new(Mutex::new(None));
        service_fn(move |request| {
            let peer = peer.clone();
            let redis = redis.clone();
            async move {
                Ok::<_, Infallible>(
                    match claim_api::read_claim(&peer.index, &peer.tranche, request).await {
                        Ok(claim) => decide(&peer, &redis, claim).await,
                        Err(answer) => answer,
                    },
                )
            }
        })
    })
    .await
}

async fn decide(peer: &Peer, redis: &Mutex<Option<RedisConnection>>, claim: Claim) -> Answer {
    let county = claim.county;
    let mut keys = vec![format!("u:{}", claim.user_id)];
    if let Some(h) = claim.id_hash {
        keys.push(format!("i:{h}"));
    }
    if let Some(h) = claim.phone_hash {
        keys.push(format!("p:{h}"));
    }
    if let Some(d) = claim.device_id {
        keys.push(format!("d:{d}"));
    }
    let county_text = county.to_string();
    let n = keys.len().to_string();
    let location = format!("{},{}", claim.lng, claim.lat);
    let mut argv: Vec<&[u8]> = vec![
        b"EVALSHA",
        peer.script_sha.as_bytes(),
        b"0",
        peer.tranche.as_bytes(),
        county_text.as_bytes(),
        n.as_bytes(),
    ];
    argv.extend(keys.iter().map(|k| k.as_bytes()));
    argv.push(claim.request_id.as_bytes());
    argv.push(location.as_bytes());

    let mut guard = redis.lock().await;
    if guard.is_none() {
        match connect_redis(peer.redis).await {
            Ok(c) => *guard = Some(c),
            Err(_) => return claim_api::unavailable(),
        }
    }
    let conn = guard.as_mut().expect("connected above");
    let answer = conn.call(&argv).await;
    drop(guard);
    match answer {
        Ok(Reply::Array(items)) => match items.as_slice() {
            [Reply::Integer(201), Reply::Bulk(Some(id))] => {
                claim_api::claimed(&String::from_utf8_lossy(id), &peer.tranche, county)
            }
            [Reply::Integer(409)] => claim_api::already_claimed(),
            [Reply::Integer(410)] => claim_api::sold_out(),
            [Reply::Integer(422)] => claim_api::outside_area(),
            _ => claim_api::internal(),
        },
        _ => {
            *redis.lock().await = None;
            claim_api::unavailable()
        }
    }
}

fn redis_error(message: String) -> io::Error {
    io::Error::other(message)
}

#[derive(Debug)]
enum Reply {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A minimal RESP2 connection: one command at a time.
struct RedisConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
    out: Vec<u8>,
}

async fn connect_redis(addr: SocketAddr) -> io::Result<RedisConnection> {
    let deadline = tokio::time::Instant::now() + REDIS_START_DEADLINE;
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                let mut c = RedisConnection {
                    stream,
                    buffer: Vec::with_capacity(4096),
                    out: Vec::with_capacity(4096),
                };
                // Loading the AOF answers -LOADING; wait until PING succeeds.
                match c.call(&[b"PING"]).await {
                    Ok(Reply::Simple(s)) if s == b"PONG" => return Ok(c),
                    _ if tokio::time::Instant::now() < deadline => {}
                    other => return Err(redis_error(format!("redis PING: {other:?}"))),
                }
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl RedisConnection {
    async fn call(&mut self, argv: &[&[u8]]) -> io::Result<Reply> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", argv.len()).as_bytes());
        for arg in argv {
            self.out
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.out).await?;
        self.buffer.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, used)) = parse_reply(&self.buffer)? {
                debug_assert_eq!(used, self.buffer.len());
                if let Reply::Error(e) = &reply {
                    return Err(redis_error(String::from_utf8_lossy(e).into_owned()));
                }
                return Ok(reply);
            }
            if self.buffer.len() > MAX_REPLY_BYTES {
                return Err(redis_error("redis reply too large".into()));
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(redis_error("redis closed the connection".into()));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Parses one RESP2 value; `None` if more bytes are needed.
fn parse_reply(buf: &[u8]) -> io::Result<Option<(Reply, usize)>> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if line_end == 0 {
        return Err(redis_error("empty RESP line".into()));
    }
    let line = &buf[1..line_end];
    let after = line_end + 2;
    let number = || -> io::Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| redis_error("bad RESP number".into()))
    };
    match buf[0] {
        b'+' => Ok(Some((Reply::Simple(line.to_vec()), after))),
        b'-' => Ok(Some((Reply::Error(line.to_vec()), after))),
        b':' => Ok(Some((Reply::Integer(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let end = after + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(Some(buf[after..end].to_vec())), end + 2)))
        }
        b'*' => {
            let count = number()?;
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..count.max(0) {
                match parse_reply(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        _ => Err(redis_error("unknown RESP type".into())),
    }
}
