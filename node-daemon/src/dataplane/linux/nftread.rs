//! Reading Weft's own nftables tables back (the policy table and the
//! traffic counters) over netlink, in process, with nlink's nf_tables dump.
//!
//! Why not `nft -j list`: that is one process per table per pass, and
//! forking a daemon that holds hundreds of threads and file descriptors
//! (a userspace device per app) costs milliseconds each; with 200 apps the
//! pass took seconds. A dump on a netlink socket opened in the app netns
//! costs a few system calls. Writes go through libnftables (see
//! [`super::nft`]): they happen only when something changed, and one
//! transaction per table is what its batch parser gives for free.

use anyhow::{anyhow, Context, Result};
use nlink::netlink::nftables::Family;
use nlink::netlink::{Connection, Nftables};
use tokio::runtime::Runtime;

/// What a read needs of one rule: its chain, its comment and its first
/// counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleRead {
    /// Chain name.
    pub chain: String,
    /// The rule's comment (empty without one).
    pub comment: String,
    /// Packets its counter saw (0 without a counter).
    pub packets: u64,
    /// Bytes its counter saw.
    pub bytes: u64,
}

/// Every rule of the IPv4 table `table`, read in the calling thread's
/// netns; `None` when there is no such table. `chain` keeps only that
/// chain's rules.
pub fn rules(rt: &Runtime, table: &str, chain: Option<&str>) -> Result<Option<Vec<RuleRead>>> {
    rt.block_on(async {
        // Opened here, so in the calling thread's netns.
        let conn = Connection::<Nftables>::new().context("open an nf_tables netlink socket")?;
        let listed = conn
            .list_rules(table, Family::Ip)
            .await
            .map_err(|e| anyhow!("list the rules of table ip {table}: {e}"));
        let listed = match listed {
            Ok(l) => l,
            Err(e) if !table_exists(&conn, table).await? => {
                tracing::debug!(error = %format!("{e:#}"), "table gone while listing");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // A dump filtered by table answers nothing, not an error, when the
        // table is absent: only an empty answer needs the tables listed.
        if listed.is_empty() && !table_exists(&conn, table).await? {
            return Ok(None);
        }
        Ok(Some(
            listed
                .into_iter()
                .filter(|r| chain.is_none_or(|c| r.chain == c))
                .map(|r| {
                    let (packets, bytes) = r.counter().unwrap_or((0, 0));
                    RuleRead {
                        chain: r.chain,
                        comment: r.comment_text.unwrap_or_default(),
                        packets,
                        bytes,
                    }
                })
                .collect(),
        ))
    })
}

async fn table_exists(conn: &Connection<Nftables>, table: &str) -> Result<bool> {
    let tables = conn
        .list_tables_in(Family::Ip)
        .await
        .map_err(|e| anyhow!("list the ip tables: {e}"))?;
    Ok(tables.iter().any(|t| t.name == table))
}

/// The rules of an `nft -j list` document, as a dump would give them (the
/// unit tests keep their fixtures in nft's JSON).
#[cfg(test)]
pub fn from_json(v: &serde_json::Value) -> Vec<RuleRead> {
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("rule"))
        .map(|r| {
            let counter = r["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|e| e.get("counter"));
            RuleRead {
                chain: r["chain"].as_str().unwrap_or_default().to_string(),
                comment: r["comment"].as_str().unwrap_or_default().to_string(),
                packets: counter.and_then(|c| c["packets"].as_u64()).unwrap_or(0),
                bytes: counter.and_then(|c| c["bytes"].as_u64()).unwrap_or(0),
            }
        })
        .collect()
}
