//! `cairn node run` (one storage node) and `cairn devnet` (several on this machine,
//! in one process, with the API where the CLI looks by default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cairn_api::DEFAULT_API_ADDR;
use cairn_core::erasure::ErasureParams;
use cairn_core::id::Difficulty;
use cairn_daemon::http::{self as api, ApiConfig};
use cairn_daemon::{DEFAULT_KEY_DIFFICULTY, LOCAL_KEY_DIFFICULTY, Node, NodeConfig};

use crate::files::parse_size;

/// `cairn node ...`.
#[derive(clap::Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(clap::Subcommand)]
enum NodeCommand {
    /// Run a storage node until Ctrl-C or SIGTERM.
    ///
    /// The node creates its identity (DIR/node.key) on first start and keeps it;
    /// started again on the same DIR it rejoins with the same id and serves the
    /// fragments it holds. The key is made to solve the network's key puzzle
    /// (--key-difficulty), which takes about a second at the default.
    Run(RunArgs),
}

/// Arguments of `cairn node run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The node's data directory (its key and its store).
    #[arg(long)]
    data: PathBuf,
    /// Where to listen for other nodes (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The address other nodes should use to reach this one [default: the listening
    /// address]. Needed when listening on 0.0.0.0 or behind NAT.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// A node of the network to join through (repeat for fallbacks); none starts a
    /// new network.
    #[arg(long)]
    bootstrap: Vec<SocketAddr>,
    /// Most bytes of fragments this node stores (e.g. 500MiB, 20GiB).
    #[arg(long, default_value = "16GiB", value_parser = parse_size)]
    capacity: u64,
    /// Most bytes one owner may store on this node (e.g. 2GiB) [default: no quota;
    /// the capacity and PAST's thresholds are the only bounds]. Set it when the node
    /// is open to strangers: an owner past it is refused, and the refusals are
    /// counted (`cairn_owner_quota_refused_total`).
    #[arg(long, value_parser = parse_size)]
    owner_quota: Option<u64>,
    /// Serve the local HTTP API here (e.g. 127.0.0.1:7070).
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Token the API requires (`Authorization: Bearer`) [default: $CAIRN_API_TOKEN];
    /// needed to serve the API elsewhere than on loopback.
    #[arg(long)]
    api_token: Option<String>,
    /// Overlay keepalive period in milliseconds (failure detection takes ~3 periods).
    #[arg(long, default_value_t = 300, hide = true)]
    tick_ms: u64,
    /// The network's key puzzle (docs/SECURITY.md): leading zero bits it asks of a
    /// node id's puzzle hash. Peers whose keys fall short are refused, and this node's
    /// key must meet it (a new key is made to). Every node of a network must use the
    /// same value; each bit doubles the time to make a key (16: about 1.3 s on average, once).
    #[arg(long, value_name = "BITS", default_value_t = DEFAULT_KEY_DIFFICULTY.0,
          value_parser = clap::value_parser!(u8).range(0..=40))]
    key_difficulty: u8,
    /// Most node ids of one subnet (IPv4 /24, IPv6 /48) in this node's leaf set and in
    /// each routing-table row [default: 2; unlimited when listening on loopback].
    /// Raise it for a test network whose nodes share a subnet.
    #[arg(long)]
    max_ids_per_subnet: Option<usize>,
    #[command(flatten)]
    params: DefaultParams,
}

/// The erasure parameters a node's API uses for a put that names none.
#[derive(clap::Args, Clone, Copy)]
pub struct DefaultParams {
    /// Default data fragments per block for puts through this API.
    #[arg(short, default_value_t = ErasureParams::DEFAULT.k())]
    k: u16,
    /// Default parity fragments per block for puts through this API.
    #[arg(short, default_value_t = ErasureParams::DEFAULT.m())]
    m: u16,
}

impl DefaultParams {
    fn get(self) -> anyhow::Result<ErasureParams> {
        ErasureParams::new(self.k, self.m).context("invalid -k/-m")
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Waits for Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// `cairn node`.
pub fn node_command(args: NodeArgs) -> anyhow::Result<()> {
    let NodeCommand::Run(args) = args.command;
    runtime()?.block_on(async move {
        let mut config = NodeConfig::new(&args.data, args.listen, args.capacity);
        config.advertise = args.advertise;
        config.bootstrap = args.bootstrap.clone();
        config.overlay.tick = Duration::from_millis(args.tick_ms.max(10));
        if let Some(max) = args.max_ids_per_subnet {
            config.overlay.max_ids_per_subnet = max.max(1);
        }
        config.default_params = args.params.get()?;
        config.net.key_difficulty = Difficulty(args.key_difficulty);
        config.past.owner_quota = args.owner_quota;
        let node = Node::start(config)
            .await
            .with_context(|| format!("starting the node in {}", args.data.display()))?;
        println!(
            "cairn node {} listening on {}",
            node.id(),
            node.advertised()
        );
        let server = match args.api {
            Some(listen) => {
                let server = api::serve(
                    node.clone(),
                    ApiConfig {
                        listen,
                        token: args
                            .api_token
                            .clone()
                            .or_else(|| std::env::var("CAIRN_API_TOKEN").ok()),
                    },
                )
                .await
                .context("starting the API")?;
                println!("api on http://{}", server.addr);
                Some(server)
            }
            None => None,
        };
        stop_signal().await;
        eprintln!("stopping");
        drop(server);
        node.shutdown().await;
        Ok(())
    })
}

/// Arguments of `cairn devnet`.
#[derive(clap::Args)]
pub struct DevnetArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Where the nodes keep their data [default: $CAIRN_HOME/devnet]. Started again
    /// on the same directory, the devnet resumes with its data.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where to serve the API (the CLI's default address).
    #[arg(long, default_value = DEFAULT_API_ADDR)]
    api: SocketAddr,
    /// Most bytes of fragments each node stores.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    capacity: u64,
    /// The devnet's key puzzle, in leading zero bits (see `cairn node run --help`);
    /// low, so that every node's key is made in milliseconds.
    #[arg(long, value_name = "BITS", default_value_t = LOCAL_KEY_DIFFICULTY.0,
          value_parser = clap::value_parser!(u8).range(0..=40))]
    key_difficulty: u8,
    #[command(flatten)]
    params: DefaultParams,
}

/// `cairn devnet`.
pub fn devnet_command(args: DevnetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=64).contains(&args.nodes),
        "--nodes must be between 1 and 64"
    );
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| crate::cairn_home().join("devnet"));
    let params = args.params.get()?;
    runtime()?.block_on(async move {
        let resumed = dir.join("node-0").join("node.key").exists();
        let mut nodes: Vec<Node> = Vec::with_capacity(args.nodes);
        for i in 0..args.nodes {
            let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
            let mut config = NodeConfig::new(dir.join(format!("node-{i}")), listen, args.capacity);
            config.default_params = params;
            // Every devnet node is on 127.0.0.1: the transport's caps per address would
            // count the whole devnet as one peer.
            config.net.max_inbound_per_address = config.net.max_inbound;
            config.net.max_handshakes_per_address = config.net.max_handshakes;
            config.net.key_difficulty = Difficulty(args.key_difficulty);
            // And the overlay's limit of ids per subnet would keep two of them in a
            // leaf set (NodeConfig::new already lifts it on loopback; said here too).
            config.overlay.max_ids_per_subnet = usize::MAX;
            if let Some(first) = nodes.first() {
                config.bootstrap = vec![first.advertised()];
            }
            let node = Node::start(config)
                .await
                .with_context(|| format!("starting devnet node {i}"))?;
            eprintln!("node {i}: {} on {}", node.id(), node.advertised());
            nodes.push(node);
        }
        let Some(first) = nodes.first().cloned() else {
            anyhow::bail!("no nodes");
        };
        let server = api::serve(
            first,
            ApiConfig {
                listen: args.api,
                token: None,
            },
        )
        .await
        .with_context(|| {
            format!(
                "serving the API on {} (is another devnet running? use --api 127.0.0.1:0)",
                args.api
            )
        })?;
        let api_note = if server.addr.to_string() == DEFAULT_API_ADDR {
            String::new()
        } else {
            format!(" --api {}", server.addr)
        };
        println!(
            "devnet: {} nodes on 127.0.0.1{}, data in {}\napi on http://{}",
            nodes.len(),
            if resumed { " (resumed)" } else { "" },
            dir.display(),
            server.addr
        );
        println!(
            "try, in another terminal:\n  \
             cairn put FILE{api_note}          # prints the file's reference, cairn:f:...\n  \
             cairn get REF -o COPY{api_note}\n  \
             cairn stat REF{api_note}\n  \
             cairn rm REF{api_note}\n  \
             cairn status{api_note}\n\
             (from the source tree: cargo run --release -- put FILE)\n\
             Ctrl-C stops the devnet; run it again on the same --dir to resume with its data."
        );
        stop_signal().await;
        eprintln!("stopping {} nodes", nodes.len());
        drop(server);
        for node in &nodes {
            node.shutdown().await;
        }
        Ok(())
    })
}
