//! `corral image …`: pull, import, list, inspect and remove OCI images in the store under
//! `<data>/images/` (see `corral_runtime::oci`).
//!
//! Images recorded here are the operator's: pinned, they stay when the last snapshot using
//! them is deleted (the server forgets only images it pulled itself), until `image rm`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use corral_runtime::oci::store::{PullProgress, Recorder};
use corral_runtime::oci::{ImageStore, RegistryOptions};

/// Arguments of `corral image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    cmd: ImageCmd,
    /// Directory for the database, images and sandboxes.
    #[arg(
        long,
        env = "CORRAL_DATA_DIR",
        default_value = "./corral-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Registries that may fall back to plain HTTP when HTTPS fails, besides loopback ones
    /// (comma-separated `host[:port]`).
    #[arg(
        long = "insecure-registry",
        env = "CORRAL_INSECURE_REGISTRIES",
        value_delimiter = ',',
        global = true
    )]
    insecure: Vec<String>,
    /// Docker-style config.json with registry credentials (default ~/.docker/config.json).
    #[arg(long, env = "CORRAL_REGISTRY_AUTH_FILE", global = true)]
    auth_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ImageCmd {
    /// Pull an image from a registry (`alpine:3`, `localhost:5000/x@sha256:…`), even when
    /// the store has it: the way to take a newer image under a tag the store holds (the
    /// server uses stored images as they are, without asking the registry).
    Pull { reference: String },
    /// Import a `docker save` or OCI layout archive (for hosts without registry access):
    /// the server then uses it by name or digest without any network access.
    Import {
        archive: PathBuf,
        /// Record the image under this reference instead of the archive's names.
        #[arg(long)]
        name: Option<String>,
    },
    /// List stored images.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a stored image (digests, layer directories, config, size) as JSON.
    Inspect { reference: String },
    /// Forget an image reference and remove layers no image uses any more.
    Rm {
        reference: String,
        /// Keep unused layers (no garbage collection).
        #[arg(long)]
        no_gc: bool,
    },
    /// Remove layers and blobs no image references.
    Gc,
}

fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 || unit == "GiB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{bytes} B")
}

fn short(d: &str) -> &str {
    d.get(..19).unwrap_or(d)
}

/// Runs `corral image …`.
pub async fn run(args: ImageArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let opts = RegistryOptions {
        insecure: args.insecure.clone(),
        auth_file: args.auth_file.clone(),
    };
    let store = ImageStore::open(&args.data_dir, &opts)?;
    let in_use = corral_runtime::oci::images::layers_in_use(&args.data_dir);
    let mut out = std::io::stdout().lock();
    match args.cmd {
        ImageCmd::Pull { reference } => {
            let seen: Mutex<HashMap<String, u64>> = Mutex::default();
            let progress = |p: &PullProgress| {
                if p.cached {
                    eprintln!("{}: already present (cached)", short(&p.layer));
                } else {
                    if let Ok(mut s) = seen.lock() {
                        s.insert(p.layer.clone(), p.done);
                    }
                    eprintln!(
                        "{}: {} / {}",
                        short(&p.layer),
                        human(p.done),
                        human(p.total)
                    );
                }
            };
            let img = store
                .pull(&reference, Recorder::Operator, &progress)
                .await
                .with_context(|| format!("pulling {reference}"))?;
            let downloaded: u64 = seen.lock().map(|s| s.values().sum()).unwrap_or(0);
            writeln!(
                out,
                "pulled {} {} ({} layers, downloaded {} bytes, size {})",
                img.reference,
                img.manifest_digest,
                img.layers.len(),
                downloaded,
                human(img.size)
            )?;
        }
        ImageCmd::Import { archive, name } => {
            let imgs = store
                .import(&archive, name.as_deref())
                .with_context(|| format!("importing {}", archive.display()))?;
            for img in imgs {
                writeln!(
                    out,
                    "imported {} {} ({} layers, size {})",
                    img.reference,
                    img.manifest_digest,
                    img.layers.len(),
                    human(img.size)
                )?;
            }
        }
        ImageCmd::List { json } => {
            let imgs = store.list()?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&imgs)?)?;
            } else {
                writeln!(
                    out,
                    "{:<50} {:<20} {:>7} {:>10}",
                    "REFERENCE", "DIGEST", "LAYERS", "SIZE"
                )?;
                for i in imgs {
                    writeln!(
                        out,
                        "{:<50} {:<20} {:>7} {:>10}",
                        i.reference,
                        short(&i.manifest_digest),
                        i.layers.len(),
                        human(i.size)
                    )?;
                }
            }
        }
        ImageCmd::Inspect { reference } => {
            let img = store
                .resolve(&reference)?
                .with_context(|| format!("image {reference} is not in the store"))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&img)?)?;
        }
        // Layers of sandboxes (and below sandbox snapshots) stay, whatever names them.
        ImageCmd::Rm { reference, no_gc } => {
            let img = store.remove(&reference)?;
            writeln!(out, "removed {}", img.reference)?;
            if !no_gc {
                let r = store.gc(&in_use)?;
                writeln!(
                    out,
                    "freed {} layers ({})",
                    r.layers_removed,
                    human(r.bytes_freed)
                )?;
            }
        }
        ImageCmd::Gc => {
            let r = store.gc(&in_use)?;
            writeln!(
                out,
                "freed {} layers ({}), {} blobs",
                r.layers_removed,
                human(r.bytes_freed),
                r.blobs_removed
            )?;
        }
    }
    Ok(())
}
