//! A node's side of the fleet: asking the parent for its upstream list, and keeping the last good
//! one on disk for a start while the parent is down.
//!
//! [`upstreams`] asks `GET <parent>/_berth/fleet/v1/upstreams`, fleet-signed, within
//! [`FETCH_TIMEOUT`] (connect, head and body together), the connection and the answer's head
//! within `[fleet] parent_timeout` (so a start or a reload is held by a black-holed or silent
//! parent for that, a few seconds, before the saved list serves); a good answer is checked whole (`listing`), then written to
//! `<storage>/fleet/upstreams.json` (temp file, fsync, rename: a crash leaves the old list or the
//! new one, never half of one). Any failure (no connection, a refusal, a bad body) falls back to
//! that file, logged as a warning; with no file either, the start fails saying both reasons.
//!
//! Rule of dependency: uses `config` (the table), `listing`, the parent module's key and path,
//! `upstream::connect` (the HTTPS client builder).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::listing::{Listing, MAX_LISTING_BYTES};
use super::{UPSTREAMS_PATH, key};
use crate::cluster::auth;
use crate::config::{FleetConfig, UpstreamConfig};
use crate::upstream::connect::{TimeoutConnector, https_connector};

/// The whole exchange with the parent at start or reload.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the last good list is kept, under the storage directory.
pub fn saved_path(storage: &Path) -> PathBuf {
    storage.join("fleet").join("upstreams.json")
}

/// The node's upstreams: the parent's list, asked now, or the one saved at the last good answer.
pub async fn upstreams(fleet: &FleetConfig, storage: &Path) -> Result<Vec<UpstreamConfig>, String> {
    let parent = fleet.parent.as_ref().ok_or("not a node: no fleet.parent")?;
    let asked = match fetch(fleet).await {
        Ok(listing) => match listing.node_upstreams(fleet) {
            Ok(ups) => {
                if let Err(e) = save(storage, &listing) {
                    tracing::warn!(error = %e, "fleet: the parent's upstream list could not be saved; a start with the parent down will not find it");
                }
                return Ok(ups);
            }
            Err(e) => e,
        },
        Err(e) => e,
    };
    let path = saved_path(storage);
    match std::fs::read(&path) {
        Ok(body) => {
            let ups = Listing::parse(&body)
                .and_then(|l| l.node_upstreams(fleet))
                .map_err(|e| {
                    format!(
                        "the parent {parent} answered no upstream list ({asked}), and the one saved at {} is unusable: {e}",
                        path.display()
                    )
                })?;
            tracing::warn!(parent = %parent, error = %asked, saved = %path.display(), "fleet: the parent's upstream list is not available; serving with the one saved at the last good answer");
            Ok(ups)
        }
        Err(e) => Err(format!(
            "the parent {parent} answered no upstream list ({asked}), and none was saved ({}: {e})",
            path.display()
        )),
    }
}

/// Asks the parent for its list, within [`FETCH_TIMEOUT`].
pub async fn fetch(fleet: &FleetConfig) -> Result<Listing, String> {
    fetch_within(fleet, FETCH_TIMEOUT).await
}

/// As [`fetch`], within `limit` (tests bound a parent that never answers); the connection and the
/// answer's head within `[fleet] parent_timeout` too.
pub async fn fetch_within(fleet: &FleetConfig, limit: Duration) -> Result<Listing, String> {
    let head_limit = fleet.parent_timeout().min(limit);
    let parent = fleet.parent.as_ref().ok_or("not a node: no fleet.parent")?;
    let secret = fleet
        .secret
        .as_ref()
        .ok_or("the fleet secret was not read (the config was not validated)")?;
    let https = https_connector(fleet.ca_file.as_deref())?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .build(TimeoutConnector::new(https, head_limit));
    let url = parent
        .join(UPSTREAMS_PATH)
        .map_err(|e| format!("{parent}: {e}"))?;
    let req = Request::get(url.as_str())
        .header(
            header::AUTHORIZATION,
            key(secret).sign("GET", UPSTREAMS_PATH, auth::now()),
        )
        .body(Empty::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let exchange = async {
        let resp = tokio::time::timeout(head_limit, client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer within {head_limit:?} (fleet.parent_timeout)"))?
            .map_err(|e| format!("{url}: {}", crate::error::chain(&e)))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                return Err(format!(
                    "{url}: 401: the parent refused the fleet proof (is fleet.secret_file the parent's secret, and are the clocks within a minute?)"
                ));
            }
            StatusCode::NOT_FOUND => {
                return Err(format!(
                    "{url}: 404: the parent has no [fleet] table (or is another node)"
                ));
            }
            s => return Err(format!("{url}: the parent answered {s}")),
        }
        let body = Limited::new(resp.into_body(), MAX_LISTING_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{url}: the body: {e}"))?
            .to_bytes();
        Listing::parse(&body)
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("{url}: no whole answer within {limit:?}"))?
}

/// Writes the list atomically: a temp file beside it, synced, renamed, the directory synced.
fn save(storage: &Path, listing: &Listing) -> std::io::Result<()> {
    let path = saved_path(storage);
    let dir = path.parent().expect("the saved path has a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("upstreams.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&listing.to_json())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path, parent: &str) -> FleetConfig {
        let secret = dir.join("s");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let mut f: FleetConfig = toml::from_str(&format!(
            "parent = \"{parent}\"\nself = \"http://10.0.0.7:5000\"\npeers_dns = \"nodes\"\nsecret_file = {:?}\n",
            secret.display().to_string()
        ))
        .unwrap();
        f.validate().unwrap();
        f
    }

    /// The parent unreachable: the saved list serves; without one, the start fails naming both
    /// the parent's failure and the missing file; a saved file that is not a list is named too.
    #[tokio::test]
    async fn with_the_parent_down_the_saved_list_serves() {
        let dir = tempfile::tempdir().unwrap();
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let f = node(dir.path(), &url);
        let storage = dir.path().join("data");
        let e = upstreams(&f, &storage).await.unwrap_err();
        assert!(
            e.contains(&url) && e.contains("none was saved") && e.contains("upstreams.json"),
            "{e}"
        );

        let listing = Listing::parse(
            br#"{"upstreams":[{"name":"docker.io","aliases":[],"default":true,"library_prefix":true,"tag_ttl_ms":30000}]}"#,
        )
        .unwrap();
        save(&storage, &listing).unwrap();
        assert!(!storage.join("fleet/upstreams.json.tmp").exists());
        let ups = upstreams(&f, &storage).await.unwrap();
        assert_eq!(ups[0].name, "docker.io");
        assert_eq!(ups[0].namespace.as_deref(), Some("docker.io"));
        assert_eq!(ups[0].url.as_str(), format!("{url}/"));

        std::fs::write(saved_path(&storage), "{").unwrap();
        let e = upstreams(&f, &storage).await.unwrap_err();
        assert!(e.contains("is unusable"), "{e}");
    }
}
