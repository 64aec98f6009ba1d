//! Preparing a sandbox's start on the host: its writable layer and `/etc`, the agent's
//! config, log and socket, its network slot and volume sources; then the plan
//! ([`crate::plan::build`]) the spawner runs.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use corral_core::agent::{AGENT_PATH_IN_SANDBOX, AgentConfig};
use corral_core::{Runtime, RuntimeError, SandboxSpec};

use super::binding::{image_trees, oci_account, oci_env, prepare_oci_upper};
use super::{DEFAULT_PATH, LinuxRuntime, READ_ONLY, clear_volatile_markers, cstr, layer_error};
use crate::beneath::Tree;
use crate::oci::images::{self as bound, BoundImage};
use crate::plan::{Overlay, PlanInput};
use crate::spawn::Plan;

impl LinuxRuntime {
    /// Writes the sandbox's directories and files and builds the clone plan.
    pub(super) fn prepare(&self, spec: &SandboxSpec) -> Result<Plan, RuntimeError> {
        let bound = self.root_of(spec)?;
        // An OCI root (one overlay) rather than the host image's overlays.
        let oci = bound.as_ref().filter(|b| !b.is_host());
        let host = |c: &'static str| move |e: io::Error| RuntimeError::host(c, e);
        // Every sandbox mounts its root on the same directory, each in its own mount
        // namespace: no mount point to create and remove per sandbox.
        let mnt = self.cfg.data_dir.join("mnt");
        let layer = self
            .disk
            .create(&spec.id, u64::from(spec.resources.disk_gib) << 30)?;
        let names = self.layer_names(oci.is_some());
        // The layer dir is corral's, but what an archive restore put in it came from the
        // sandbox: no link is followed there either.
        let layer_tree = Tree::open(&layer).map_err(host("opening the sandbox's layer"))?;
        for l in &names {
            layer_tree
                .mkdir_all(&Path::new("upper").join(l), 0o755, None)
                .map_err(host("creating upper dir"))?;
            layer_tree
                .mkdir_all(&Path::new("work").join(l), 0o700, None)
                .map_err(host("creating work dir"))?;
        }
        // An OCI root's upper dir and layers, opened once for the account lookup, the
        // upper's preparation and its /etc.
        let oci_trees = oci
            .map(|img| image_trees(&layer_tree, img).map(|t| (img, t)))
            .transpose()?;
        let account = match &oci_trees {
            Some((img, trees)) => oci_account(spec, img, trees)?,
            None => self
                .image
                .account(&spec.user)
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!(
                        "user {:?} does not exist in image {:?}",
                        spec.user, spec.image
                    ))
                })?
                .clone(),
        };
        if clear_volatile_markers(&layer, &names).map_err(host("clearing overlay markers"))? {
            tracing::warn!(
                sandbox = %spec.id,
                "sandbox was not stopped cleanly; if the host crashed while it ran, its most \
                 recent writes may be missing"
            );
        }
        if let Some((img, trees)) = &oci_trees {
            prepare_oci_upper(trees, img, &account)?;
            self.write_etc(&trees[0], "etc", spec)?;
        } else if self.image.dirs.iter().any(|d| d.name == "etc") {
            self.write_etc(&layer_tree, "upper/etc", spec)?;
        }

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        env.insert("HOME".into(), account.home.clone());
        env.insert("USER".into(), account.name.clone());
        env.insert("LOGNAME".into(), account.name.clone());
        env.insert("SHELL".into(), account.shell.clone());
        env.insert("HOSTNAME".into(), spec.id.clone());
        env.insert("LANG".into(), "C.UTF-8".into());
        let mut work_dir = account.home.clone();
        let mut entrypoint = Vec::new();
        if let Some(img) = &bound {
            oci_env(&mut env, &img.config.env);
            if let Some(w) = &img.config.working_dir {
                work_dir = w.clone();
            }
            entrypoint = img
                .config
                .entrypoint
                .iter()
                .chain(&img.config.cmd)
                .cloned()
                .collect();
        }
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let config = AgentConfig {
            sandbox_id: spec.id.clone(),
            user: account.name.clone(),
            uid: account.uid,
            gid: account.gid,
            home: account.home.clone(),
            work_dir,
            env,
            entrypoint,
        };
        self.finish_prepare(spec, &config, &layer, &mnt, bound.as_ref())
    }

    /// Writes the sandbox's `/etc/hostname`, `/etc/hosts` and (with a network)
    /// `/etc/resolv.conf` into `etc` below `dir`: the directory of its writable layer that is
    /// its `/etc`.
    /// The layer is the sandbox's: each file is replaced (a link planted there is replaced
    /// itself, never written through) and a link on the way to `etc` fails the start.
    fn write_etc(&self, dir: &Tree, etc: &str, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let etc = dir
            .open_dir(Path::new(etc))
            .map_err(|e| layer_error("opening the sandbox's /etc", e))?;
        let write = |name: &str, body: String| {
            etc.replace_file(Path::new(name), body.as_bytes(), 0o644)
                .map_err(|e| layer_error("writing the sandbox's /etc", e))
        };
        write("hostname", format!("{}\n", spec.id))?;
        write(
            "hosts",
            format!(
                "127.0.0.1\tlocalhost {id}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                id = spec.id
            ),
        )?;
        if let Some(net) = &self.net
            && !net.dns().is_empty()
        {
            let mut conf = String::from("# written by corral\n");
            for ns in net.dns() {
                conf.push_str(&format!("nameserver {ns}\n"));
            }
            // Replaces the host's file too when it is a link into /run (systemd-resolved).
            write("resolv.conf", conf)?;
        }
        Ok(())
    }

    /// The rest of `prepare`: agent config, log, socket, network slot, volume sources, and
    /// the clone plan ([`crate::plan::build`]).
    fn finish_prepare(
        &self,
        spec: &SandboxSpec,
        config: &AgentConfig,
        layer: &Path,
        mnt: &Path,
        oci: Option<&BoundImage>,
    ) -> Result<Plan, RuntimeError> {
        let host = |c: &'static str| move |e: io::Error| RuntimeError::host(c, e);
        let body = serde_json::to_vec(config)
            .map_err(|e| RuntimeError::host("encoding agent config", e))?;
        let config_fd = config_memfd(&body).map_err(host("writing agent config"))?;
        // A pipe the server copies into a file next to the sandbox's writable layer (so it
        // goes when the sandbox goes); never a host file the agent could name.
        let log =
            crate::agent_log::start(layer.join("agent.log")).map_err(host("opening agent log"))?;
        let sock = self.agent_socket(&spec.id);
        match fs::remove_file(&sock) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(RuntimeError::host("removing stale socket", e));
            }
            _ => {}
        }
        let listener: OwnedFd = UnixListener::bind(&sock)
            .map_err(host("binding agent socket"))?
            .into();
        // The network slot, with its egress policy already in force.
        let netns = match &self.net {
            Some(net) => Some(
                net.lease(&spec.id, &spec.egress)
                    .map_err(|e| RuntimeError::host("taking a network slot", e))?
                    .netns,
            ),
            None => None,
        };
        let overlays = self.root_overlays(mnt, oci);
        let volumes = crate::volume::prepare_binds(
            &self.cfg.data_dir,
            &spec.volumes,
            mnt,
            config.uid,
            config.gid,
        )?;
        let procs = self.cgroups.procs_files(&spec.id);
        let steps = crate::plan::build(&PlanInput {
            id: &spec.id,
            cgroup_procs: &procs,
            netns: netns.as_ref().map(AsRawFd::as_raw_fd),
            layer,
            mnt,
            overlays: &overlays,
            agent_binary: &self.cfg.agent_binary,
            agent_in_sandbox: AGENT_PATH_IN_SANDBOX,
            masked: &self.masked,
            read_only: READ_ONLY,
            dropped_caps: &self.dropped_caps,
            nofile: self.nofile,
            seccomp: &self.seccomp,
            volumes,
        })
        .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        Ok(Plan {
            steps,
            exec_path: cstr(AGENT_PATH_IN_SANDBOX)?,
            argv: vec![cstr("corral-agent")?],
            envp: vec![cstr(format!("PATH={DEFAULT_PATH}"))?],
            listener,
            config: config_fd,
            log,
            netns,
        })
    }

    /// Names of a sandbox's overlay layers: its root and, for the host image, each
    /// overlaid host directory (an OCI image is one overlay).
    pub(super) fn layer_names(&self, oci: bool) -> Vec<String> {
        if oci {
            return vec!["root".to_string()];
        }
        std::iter::once("root".to_string())
            .chain(self.image.dirs.iter().map(|d| d.name.clone()))
            .collect()
    }

    /// [`Self::layer_names`] of a sandbox, by its binding.
    pub(super) fn layer_names_of(&self, id: &str) -> Result<Vec<String>, RuntimeError> {
        let b = bound::read_binding(&self.cfg.data_dir, id)
            .map_err(|e| RuntimeError::host("reading the sandbox's image binding", e))?;
        Ok(self.layer_names(b.is_some_and(|b| !b.is_host())))
    }

    /// The root overlays, the root first: for an OCI image one overlay of its layers; for
    /// the host image the skeleton root and each overlaid host directory, each with the
    /// upper dirs of any commits above it.
    fn root_overlays(&self, mnt: &Path, bound: Option<&BoundImage>) -> Vec<Overlay> {
        if let Some(img) = bound.filter(|b| !b.is_host()) {
            return vec![Overlay {
                target: mnt.to_owned(),
                lowers: img.lower_dirs(),
                name: "root".into(),
            }];
        }
        let commits = |name: &str| -> Vec<PathBuf> {
            bound
                .map(|b| {
                    b.commits
                        .iter()
                        .map(|c| c.join("upper").join(name))
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut root = vec![self.image.skeleton.clone()];
        root.extend(commits("root"));
        let mut v = vec![Overlay {
            target: mnt.to_owned(),
            lowers: root,
            name: "root".into(),
        }];
        for d in &self.image.dirs {
            // `d.lowers` lists the top-most first.
            let mut lowers: Vec<PathBuf> = d.lowers.iter().rev().cloned().collect();
            lowers.extend(commits(&d.name));
            v.push(Overlay {
                target: mnt.join(&d.name),
                lowers,
                name: d.name.clone(),
            });
        }
        v
    }
}

/// The agent's configuration in a sealed memfd: read by the agent on its fd 4, never on disk.
fn config_memfd(body: &[u8]) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        c"corral-agent-config",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(io::Error::from)?;
    let mut file = fs::File::from(fd);
    io::Write::write_all(&mut file, body)?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_ADD_SEALS(
            nix::fcntl::SealFlag::F_SEAL_WRITE
                | nix::fcntl::SealFlag::F_SEAL_GROW
                | nix::fcntl::SealFlag::F_SEAL_SHRINK
                | nix::fcntl::SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(io::Error::from)?;
    Ok(file.into())
}
