//! `loadtest`: release-day load against voucherd. See `loadtest --help` and
//! the "Release-day rehearsal" section of the README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use loadtest::admin::{self, TrancheDefinition};
use loadtest::burst::{BotConfig, Burst};
use loadtest::compare::{self, CompareConfig};
use loadtest::population::{self, Area, Keys};
use loadtest::record::{Outcome, Summary};
use loadtest::steady::{Mode, Steady};
use loadtest::{SplitMix, cpu, report, verify};
use voucherd::core::UnixMillis;

#[derive(Parser)]
#[command(
    about = "Release-day load for voucherd: bursts, open-loop rates, side-by-side comparison"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everyone presses "claim" at the release instant t0.
    Burst(BurstArgs),
    /// Open loop at a fixed rate; latency from each request's intended send time.
    Rate(RateArgs),
    /// Closed loop: every connection sends as soon as it has an answer.
    Saturate(SaturateArgs),
    /// hello server, voucherd and the Redis (and, if asked, PostgreSQL) peers, measured in one run.
    Compare(CompareArgs),
}

#[derive(Args, Clone)]
struct Target {
    /// The voucherd config the server runs with: regions, counties, listen addresses.
    #[arg(long)]
    config: PathBuf,
    /// Public listener (default: the config's `server.public_listen`).
    #[arg(long)]
    public: Option<std::net::SocketAddr>,
    /// Admin listener (default: the config's `server.admin_listen`).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Environment variable holding the admin bearer token.
    #[arg(long, default_value = "VOUCHERD_ADMIN_TOKEN")]
    admin_token_env: String,
    /// File holding the admin bearer token (wins over the environment variable).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Which identity keys each claim carries.
    #[arg(long, value_enum, default_value = "all")]
    keys: Keys,
    /// Seed for people, points and bots.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Generator threads (tokio workers).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where the JSON result and the SVG chart go.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// voucherd's process ID, to report its CPU time too.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Face value of the run's vouchers, fen.
    #[arg(long, default_value_t = 2000)]
    face_value_fen: u64,
}

#[derive(Args)]
struct BurstArgs {
    #[command(flatten)]
    target: Target,
    /// Simulated people (identities).
    #[arg(long, default_value_t = 200_000)]
    people: usize,
    /// Vouchers in the tranche, split evenly over the configured counties.
    #[arg(long, default_value_t = 100_000)]
    quota: u64,
    /// Keep-alive connections shared by the people (partner platforms' pools).
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// t0 is this far after the tranche is created (time to open connections).
    #[arg(long, default_value_t = 3_000)]
    lead_ms: u64,
    /// Share of identities that act as grabbing scripts.
    #[arg(long, default_value_t = 0.0)]
    bot_share: f64,
    /// Bots start firing this long before t0.
    #[arg(long, default_value_t = 200)]
    bot_lead_ms: u64,
    /// Connections each bot holds.
    #[arg(long, default_value_t = 4)]
    bot_connections: usize,
    /// Attempts per bot before it gives up.
    #[arg(long, default_value_t = 200)]
    bot_max_attempts: u32,
    /// Answer-time budget after t0 checked by the summary.
    #[arg(long, default_value_t = 2_000)]
    deadline_ms: u64,
}

#[derive(Args)]
struct SteadyArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Vouchers per county (large, so the tranche never sells out).
    #[arg(long, default_value_t = 10_000_000)]
    quota_per_county: u64,
}

#[derive(Args)]
struct RateArgs {
    #[command(flatten)]
    steady: SteadyArgs,
    /// Requests per second, sent on schedule whatever the answers do.
    #[arg(long)]
    rate: f64,
}

#[derive(Args)]
struct SaturateArgs {
    #[command(flatten)]
    steady: SteadyArgs,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    compare: CompareConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Burst(a) => a.target.threads,
        Command::Rate(a) => a.steady.target.threads,
        Command::Saturate(a) => a.steady.target.threads,
        Command::Compare(a) => a.compare.threads,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Burst(a) => burst(a).await,
            Command::Rate(a) => {
                let rate = a.rate;
                steady(
                    a.steady,
                    Mode::Open {
                        rate_per_second: rate,
                    },
                )
                .await
            }
            Command::Saturate(a) => steady(a.steady, Mode::Closed).await,
            Command::Compare(a) => compare::run(a.compare).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A run tag: short, distinct per run, valid in IDs.
fn run_tag(seed: u64) -> String {
    format!("lt{:x}{:x}", unix_ms_now() % 0xfff_ffff, seed & 0xfff)
}

struct Prepared {
    area: Area,
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    token: String,
}

fn prepare(target: &Target) -> Result<Prepared, String> {
    let area = Area::from_config(&target.config)?;
    let token = admin::read_token(&target.admin_token_env, target.admin_token_file.as_deref())?;
    Ok(Prepared {
        public: target.public.unwrap_or(area.public_addr),
        admin: target.admin.unwrap_or(area.admin_addr),
        area,
        token,
    })
}

async fn burst(args: BurstArgs) -> Result<bool, String> {
    let target = &args.target;
    let p = prepare(target)?;
    let mut rng = SplitMix(target.seed);
    let weights = vec![1u64; p.area.counties.len()];
    let quotas = admin::split_quota(args.quota, &weights);
    let people = population::people(&p.area, &quotas, args.people, args.bot_share, &mut rng)?;
    let run = run_tag(target.seed);
    let t0 = UnixMillis(unix_ms_now() + args.lead_ms as i64);
    let def = TrancheDefinition {
        campaign_id: run.clone(),
        tranche_id: run.clone(),
        opens_at: t0,
        face_value_fen: target.face_value_fen,
        quotas: p
            .area
            .counties
            .iter()
            .map(|c| c.code)
            .zip(quotas.iter().copied())
            .filter(|(_, q)| *q > 0)
            .collect(),
    };
    let define_started = std::time::Instant::now();
    admin::define(p.admin, &p.token, &def).await?;
    let define_ms = define_started.elapsed().as_secs_f64() * 1000.0;
    let bots = people.iter().filter(|x| x.bot).count();
    println!(
        "burst {run}: {} people ({bots} bots) on {} connections, {} vouchers in {} counties, t0 in {} ms",
        people.len(),
        args.connections,
        args.quota,
        def.quotas.len(),
        t0.0 - unix_ms_now()
    );
    let server_cpu_before = target.server_pid.map(cpu::tree_cpu_seconds);
    let cpu_before = cpu::self_cpu_seconds();
    let wall = std::time::Instant::now();
    let burst = Burst {
        public: p.public,
        tranche_id: def.tranche_id.clone(),
        run: run.clone(),
        keys: target.keys,
        county_codes: p.area.counties.iter().map(|c| c.code).collect(),
        people,
        connections: args.connections,
        bots: BotConfig {
            share: args.bot_share,
            lead_ms: args.bot_lead_ms,
            connections_per_bot: args.bot_connections,
            max_attempts: args.bot_max_attempts,
        },
        t0_unix_ms: t0.0,
    };
    let people_total = burst.people.len();
    let result = burst.run().await?;
    let generator_cpu = cpu::self_cpu_seconds() - cpu_before;
    let wall_s = wall.elapsed().as_secs_f64();
    let server_cpu = target
        .server_pid
        .zip(server_cpu_before)
        .map(|(pid, before)| cpu::tree_cpu_seconds(pid) - before);

    let humans = Summary::of(&result.human_samples);
    let mut all_samples = result.human_samples.clone();
    all_samples.extend_from_slice(&result.bot_samples);
    let all = Summary::of(&all_samples);
    let bot_summary = Summary::of(&result.bot_samples);
    let mut win_times: Vec<u64> = result.wins.iter().map(|(_, at)| *at).collect();
    win_times.sort_unstable();
    let sold_out_ms = (win_times.len() as u64 == def.total_quota())
        .then(|| win_times.last().map(|us| *us as f64 / 1000.0))
        .flatten();
    let bot_wins = result
        .wins
        .iter()
        .filter(|(w, _)| result.bot_identities.contains(&w.identity))
        .count();
    let view = admin::tranche_view(p.public, &def.tranche_id).await?;
    let wins: Vec<verify::Win> = result.wins.iter().map(|(w, _)| w.clone()).collect();
    let quotas_defined: Vec<(u32, u64)> = def.quotas.clone();
    let verification = verify::verify(&view, &wins, Some(&quotas_defined), result.unanswered);
    let all_answered_ms = all.last_answer_ms;
    let report = serde_json::json!({
        "kind": "burst",
        "run": run,
        "tranche_id": def.tranche_id,
        "t0_unix_ms": t0.0,
        "people": people_total,
        "bots": bots,
        "quota": def.total_quota(),
        "connections": args.connections,
        "connections_opened": result.connections_opened,
        "connect_ms": result.connect_ms,
        "define_ms": define_ms,
        "keys": target.keys,
        "seed": target.seed,
        "sold_out_ms": sold_out_ms,
        "all_answered_ms": all_answered_ms,
        "deadline_ms": args.deadline_ms,
        "answered_within_deadline": all_answered_ms.is_some_and(|ms| ms <= args.deadline_ms as f64),
        "people_latency_from_t0": humans.latency,
        "outcomes_people": humans.outcomes,
        "outcomes_bots": bot_summary.outcomes,
        "bot_scenario": {
            "share_of_identities": if people_total > 0 { bots as f64 / people_total as f64 } else { 0.0 },
            "vouchers_won": bot_wins,
            "share_of_vouchers": if wins.is_empty() { 0.0 } else { bot_wins as f64 / wins.len() as f64 },
            "attempts": result.bot_samples.len(),
            "lead_ms": args.bot_lead_ms,
            "connections_per_bot": args.bot_connections,
        },
        "generator": {"cpu_seconds": generator_cpu, "wall_seconds": wall_s, "threads": target.threads},
        "server_cpu_seconds": server_cpu,
        "verification": verification,
        "timeline": all.timeline,
    });
    let json_path = target.out.join(format!("burst-{run}.json"));
    let chart_path = target.out.join(format!("burst-{run}.svg"));
    report::write_json(&json_path, &report)?;
    report::write_chart(
        &chart_path,
        &format!(
            "burst {run}: {} people, {} vouchers, {} connections",
            people_total,
            def.total_quota(),
            args.connections
        ),
        &all.timeline,
    )?;

    println!(
        "  campaign and tranche defined in {define_ms:.0} ms; connections opened in {:.0} ms",
        result.connect_ms
    );
    println!("  people: {}", outcomes_line(&humans));
    if bots > 0 {
        println!("  bots:   {}", outcomes_line(&bot_summary));
    }
    match sold_out_ms {
        Some(ms) => println!("  sold out {ms:.0} ms after t0"),
        None => println!(
            "  not sold out: {} of {} vouchers issued",
            wins.len(),
            def.total_quota()
        ),
    }
    if let Some(ms) = all_answered_ms {
        println!(
            "  every request answered {ms:.0} ms after t0 ({} the {} ms budget)",
            if ms <= args.deadline_ms as f64 {
                "within"
            } else {
                "OVER"
            },
            args.deadline_ms
        );
    }
    let l = &humans.latency;
    println!(
        "  latency from t0 (people): p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    if bots > 0 {
        println!(
            "  bots are {:.2}% of identities and won {:.2}% of the vouchers ({} of {}), in {} attempts",
            100.0 * bots as f64 / people_total as f64,
            if wins.is_empty() {
                0.0
            } else {
                100.0 * bot_wins as f64 / wins.len() as f64
            },
            bot_wins,
            wins.len(),
            result.bot_samples.len()
        );
    }
    println!(
        "  generator CPU {generator_cpu:.2} s over {wall_s:.2} s wall ({:.2} cores){}",
        generator_cpu / wall_s,
        server_cpu
            .map(|s| format!("; server CPU {s:.2} s"))
            .unwrap_or_default()
    );
    print_verification(&verification);
    println!(
        "  wrote {} and {}",
        json_path.display(),
        chart_path.display()
    );
    Ok(verification.ok)
}

fn outcomes_line(s: &Summary) -> String {
    s.outcomes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_verification(v: &verify::Verification) {
    if v.ok {
        println!(
            "  verification OK: no over-issue, no identity twice, issued + remaining = quota in {} counties",
            v.counties.len()
        );
    } else {
        println!("  VERIFICATION FAILED:");
        for line in &v.violations {
            println!("    - {line}");
        }
    }
    for note in &v.notes {
        println!("    note: {note}");
    }
}

async fn steady(args: SteadyArgs, mode: Mode) -> Result<bool, String> {
    let target = &args.target;
    let p = prepare(target)?;
    let mut rng = SplitMix(target.seed);
    let weights = vec![1u64; p.area.counties.len()];
    let people = population::people(&p.area, &weights, 4096, 0.0, &mut rng)?;
    let run = run_tag(target.seed);
    let def = TrancheDefinition {
        campaign_id: run.clone(),
        tranche_id: run.clone(),
        opens_at: UnixMillis(unix_ms_now() - 1000),
        face_value_fen: target.face_value_fen,
        quotas: p
            .area
            .counties
            .iter()
            .map(|c| (c.code, args.quota_per_county))
            .collect(),
    };
    admin::define(p.admin, &p.token, &def).await?;
    let server_cpu_before = target.server_pid.map(cpu::tree_cpu_seconds);
    let cpu_before = cpu::self_cpu_seconds();
    let wall = std::time::Instant::now();
    let result = Steady {
        public: p.public,
        tranche_id: def.tranche_id.clone(),
        run: run.clone(),
        keys: target.keys,
        people: Arc::new(people),
        connections: args.connections,
        mode,
        warmup: Duration::from_secs_f64(args.warmup_secs),
        duration: Duration::from_secs_f64(args.duration_secs),
    }
    .run()
    .await?;
    let generator_cpu = cpu::self_cpu_seconds() - cpu_before;
    let wall_s = wall.elapsed().as_secs_f64();
    let server_cpu = target
        .server_pid
        .zip(server_cpu_before)
        .map(|(pid, before)| cpu::tree_cpu_seconds(pid) - before);
    let name = match mode {
        Mode::Open { .. } => "rate",
        Mode::Closed => "saturate",
    };
    let view = admin::tranche_view(p.public, &def.tranche_id).await?;
    let verification = verify::verify(&view, &result.wins, Some(&def.quotas), result.unanswered);
    let report = serde_json::json!({
        "kind": name,
        "run": run,
        "verification": verification,
        "result": result,
        "generator": {"cpu_seconds": generator_cpu, "wall_seconds": wall_s, "threads": target.threads},
        "server_cpu_seconds": server_cpu,
    });
    let json_path = target.out.join(format!("{name}-{run}.json"));
    let chart_path = target.out.join(format!("{name}-{run}.svg"));
    report::write_json(&json_path, &report)?;
    report::write_chart(
        &chart_path,
        &format!("{name} {run}: {} connections", args.connections),
        &result.timeline,
    )?;
    let l = &result.latency;
    println!(
        "{name} {run}: {:.0} answers/s ({:.0} claims/s) on {} connections for {:.1} s",
        result.answers_per_second, result.claims_per_second, args.connections, args.duration_secs
    );
    if let Mode::Open { rate_per_second } = mode {
        println!("  target rate {rate_per_second:.0}/s");
    }
    println!(
        "  latency{}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        if matches!(mode, Mode::Open { .. }) {
            " from intended send time"
        } else {
            ""
        },
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms
    );
    if matches!(mode, Mode::Open { .. }) {
        println!(
            "  service time p99 {:.2} ms; generator send lag p99 {:.2} ms",
            result.service_time.p99_ms, result.send_lag.p99_ms
        );
    }
    println!(
        "  outcomes: {}",
        result
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  generator CPU {generator_cpu:.2} s over {wall_s:.2} s wall ({:.2} cores){}",
        generator_cpu / wall_s,
        server_cpu
            .map(|s| format!("; server CPU {s:.2} s"))
            .unwrap_or_default()
    );
    print_verification(&verification);
    println!(
        "  wrote {} and {}",
        json_path.display(),
        chart_path.display()
    );
    let bad = result
        .outcomes
        .get(Outcome::TransportError.as_str())
        .copied()
        .unwrap_or(0);
    Ok(bad == 0 && verification.ok)
}
