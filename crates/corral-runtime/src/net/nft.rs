//! corral's nftables table: NAT for sandboxes, the rules every sandbox gets (no host, no
//! other sandbox, no link-local, no spoofing, no IPv6), and per-sandbox egress policies kept
//! as set elements keyed by the slot's host-side interface name, so changing a policy never
//! touches a rule.
//!
//! Driven through the `nft` tool with scripts (`nft -f -`): each script is one atomic
//! transaction. The kernel's nftables netlink protocol has no well-kept Rust binding that
//! covers concatenated interval sets, and policies change rarely (create with a policy,
//! `network-settings`), never on the default create path.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use corral_core::Egress;
use ipnet::Ipv4Net;

/// Errors running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft (is the nftables package installed?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
    #[error("nft printed something unexpected: {0}")]
    Parse(String),
}

/// Runs an nft script as one transaction.
pub fn run(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Runs `nft` with arguments and returns its output.
fn output(args: &[&str]) -> Result<Option<String>, NftError> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        Ok(None)
    }
}

/// The names a table's rules match on.
#[derive(Debug, Clone)]
pub struct Table {
    /// The table, in family `inet`.
    pub name: String,
    /// Host-side interface names of slots start with this.
    pub prefix: String,
    /// Addresses of all slots.
    pub cidr: Ipv4Net,
    /// Resolvers sandboxes with an allow list may still query.
    pub dns: Vec<Ipv4Addr>,
}

impl Table {
    /// Creates the table if needed and (re)writes its chains and the DNS set, keeping the
    /// policy sets' elements (sandboxes that outlived a server keep their policy).
    /// `fresh` first deletes any existing table.
    pub fn script(&self, fresh: bool) -> String {
        let t = &self.name;
        let p = format!("\"{}*\"", self.prefix);
        let cidr = self.cidr;
        let mut s = String::new();
        if fresh {
            // `add` first so the delete cannot fail on a missing table.
            let _ = writeln!(s, "add table inet {t}\ndelete table inet {t}");
        }
        let _ = writeln!(
            s,
            "add table inet {t}
add set inet {t} blocked {{ type ifname; }}
add set inet {t} limited {{ type ifname; }}
add set inet {t} allowed {{ type ifname . ipv4_addr; flags interval; }}
add set inet {t} dns {{ type ipv4_addr; }}
add chain inet {t} forward {{ type filter hook forward priority filter; policy accept; }}
add chain inet {t} input {{ type filter hook input priority filter; policy accept; }}
add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain inet {t} sandbox_out
flush chain inet {t} forward
flush chain inet {t} input
flush chain inet {t} postrouting
flush chain inet {t} sandbox_out
flush set inet {t} dns"
        );
        if !self.dns.is_empty() {
            let list: Vec<String> = self.dns.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "add element inet {t} dns {{ {} }}", list.join(", "));
        }
        let _ = writeln!(
            s,
            "add rule inet {t} forward iifname {p} jump sandbox_out
add rule inet {t} forward oifname {p} ct state established,related accept
add rule inet {t} forward oifname {p} drop
add rule inet {t} input iifname {p} drop
add rule inet {t} postrouting ip saddr {cidr} oifname != {p} masquerade
add rule inet {t} sandbox_out meta nfproto ipv6 drop
add rule inet {t} sandbox_out fib saddr . iif oif missing drop
add rule inet {t} sandbox_out ip saddr != {cidr} drop
add rule inet {t} sandbox_out ip daddr 169.254.0.0/16 drop
add rule inet {t} sandbox_out ip daddr {cidr} drop
add rule inet {t} sandbox_out ip daddr 127.0.0.0/8 drop
add rule inet {t} sandbox_out iifname @blocked drop
add rule inet {t} sandbox_out iifname @limited iifname . ip daddr @allowed accept
add rule inet {t} sandbox_out iifname @limited ip daddr @dns meta l4proto {{ tcp, udp }} th dport 53 accept
add rule inet {t} sandbox_out iifname @limited drop"
        );
        s
    }

    /// A script replacing the policy elements of interface `ifname` (`old` as applied).
    pub fn policy_script(&self, ifname: &str, old: &Egress, new: &Egress) -> String {
        let t = &self.name;
        let mut s = String::new();
        match old {
            Egress::Open => {}
            Egress::BlockAll => {
                let _ = writeln!(s, "delete element inet {t} blocked {{ \"{ifname}\" }}");
            }
            Egress::Allow(nets) => {
                let _ = writeln!(s, "delete element inet {t} limited {{ \"{ifname}\" }}");
                if !nets.is_empty() {
                    let _ = writeln!(
                        s,
                        "delete element inet {t} allowed {{ {} }}",
                        elements(ifname, nets)
                    );
                }
            }
        }
        match new {
            Egress::Open => {}
            Egress::BlockAll => {
                let _ = writeln!(s, "add element inet {t} blocked {{ \"{ifname}\" }}");
            }
            Egress::Allow(nets) => {
                if !nets.is_empty() {
                    let _ = writeln!(
                        s,
                        "add element inet {t} allowed {{ {} }}",
                        elements(ifname, nets)
                    );
                }
                let _ = writeln!(s, "add element inet {t} limited {{ \"{ifname}\" }}");
            }
        }
        s
    }

    /// The policies applied now, by interface (read back after a server restart).
    pub fn applied(&self) -> Result<HashMap<String, Egress>, NftError> {
        let mut out: HashMap<String, Egress> = HashMap::new();
        let Some(json) = output(&["-j", "list", "table", "inet", &self.name])? else {
            return Ok(out);
        };
        let v: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| NftError::Parse(e.to_string()))?;
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        for item in items {
            let Some(set) = item.get("set") else { continue };
            let elems = set["elem"].as_array().cloned().unwrap_or_default();
            match set["name"].as_str() {
                Some("blocked") => {
                    for e in elems {
                        if let Some(i) = e.as_str() {
                            out.insert(i.to_owned(), Egress::BlockAll);
                        }
                    }
                }
                Some("limited") => {
                    for e in elems {
                        if let Some(i) = e.as_str() {
                            out.entry(i.to_owned())
                                .or_insert_with(|| Egress::Allow(Vec::new()));
                        }
                    }
                }
                Some("allowed") => {
                    for e in elems {
                        let (ifname, net) = parse_allowed(&e)
                            .ok_or_else(|| NftError::Parse(format!("allowed element {e}")))?;
                        if let Egress::Allow(nets) = out
                            .entry(ifname)
                            .or_insert_with(|| Egress::Allow(Vec::new()))
                        {
                            nets.push(net);
                        }
                    }
                }
                _ => {}
            }
        }
        for e in out.values_mut() {
            if let Egress::Allow(nets) = e {
                nets.sort();
            }
        }
        Ok(out)
    }

    /// Removes the whole table (nothing of corral's stays in the host's firewall).
    pub fn delete_script(&self) -> String {
        format!("add table inet {t}\ndelete table inet {t}\n", t = self.name)
    }
}

fn elements(ifname: &str, nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(|n| format!("\"{ifname}\" . {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `allowed` element of `nft -j`: `{"elem": {"val": {"concat": [ifname, addr]}}}` or
/// the bare concat; the address is a string or `{"prefix": {"addr", "len"}}`; an interval
/// may also come back as `{"range": [first, last]}`.
fn parse_allowed(e: &serde_json::Value) -> Option<(String, Ipv4Net)> {
    let concat = e
        .get("concat")
        .or_else(|| {
            e.get("elem")
                .and_then(|x| x.get("val"))
                .and_then(|x| x.get("concat"))
        })?
        .as_array()?;
    let ifname = concat.first()?.as_str()?.to_owned();
    let addr = concat.get(1)?;
    let net = if let Some(a) = addr.as_str() {
        Ipv4Net::from(a.parse::<Ipv4Addr>().ok()?)
    } else if let Some(p) = addr.get("prefix") {
        Ipv4Net::new(p["addr"].as_str()?.parse().ok()?, p["len"].as_u64()? as u8).ok()?
    } else if let Some(r) = addr.get("range").and_then(|r| r.as_array()) {
        let first: Ipv4Addr = r.first()?.as_str()?.parse().ok()?;
        let last: Ipv4Addr = r.get(1)?.as_str()?.parse().ok()?;
        let span = u32::from(last) - u32::from(first) + 1;
        if !span.is_power_of_two() {
            return None;
        }
        Ipv4Net::new(first, 32 - span.trailing_zeros() as u8).ok()?
    } else {
        return None;
    };
    Some((ifname, net))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            name: "corral_t".into(),
            prefix: "crv".into(),
            cidr: "10.117.0.0/16".parse().expect("valid"),
            dns: vec!["10.0.0.53".parse().expect("valid")],
        }
    }

    #[test]
    fn base_script_keeps_policies_and_blocks_what_every_sandbox_must_not_reach() {
        let s = table().script(false);
        assert!(!s.contains("delete table"));
        assert!(!s.contains("flush set inet corral_t blocked"));
        assert!(s.contains("add rule inet corral_t input iifname \"crv*\" drop"));
        assert!(s.contains("ip daddr 169.254.0.0/16 drop"));
        assert!(s.contains("ip daddr 10.117.0.0/16 drop"));
        assert!(s.contains("add element inet corral_t dns { 10.0.0.53 }"));
        assert!(table().script(true).contains("delete table inet corral_t"));
    }

    #[test]
    fn policy_changes_remove_exactly_what_was_applied() {
        let t = table();
        let allow = Egress::Allow(vec!["1.2.3.0/24".parse().expect("valid")]);
        assert_eq!(t.policy_script("crv3", &Egress::Open, &Egress::Open), "");
        let s = t.policy_script("crv3", &allow, &Egress::BlockAll);
        assert!(s.contains("delete element inet corral_t limited { \"crv3\" }"));
        assert!(s.contains("delete element inet corral_t allowed { \"crv3\" . 1.2.3.0/24 }"));
        assert!(s.contains("add element inet corral_t blocked { \"crv3\" }"));
    }

    #[test]
    fn allowed_elements_parse_in_every_json_form() {
        let forms = [
            serde_json::json!({"concat": ["crv1", "1.2.3.4"]}),
            serde_json::json!({"concat": ["crv1", {"prefix": {"addr": "10.0.0.0", "len": 8}}]}),
            serde_json::json!({"elem": {"val": {"concat": ["crv1", {"range": ["10.0.0.0", "10.0.0.255"]}]}}}),
        ];
        let want: [Ipv4Net; 3] = [
            "1.2.3.4/32".parse().expect("valid"),
            "10.0.0.0/8".parse().expect("valid"),
            "10.0.0.0/24".parse().expect("valid"),
        ];
        for (f, w) in forms.iter().zip(want) {
            assert_eq!(parse_allowed(f), Some(("crv1".to_owned(), w)));
        }
    }
}
