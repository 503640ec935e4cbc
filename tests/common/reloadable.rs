//! A gateway whose config file a test rewrites between reloads, with its admin API.

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// The admin token every [`Reloadable`] gateway is started with.
pub const TOKEN: &str = "rld-5e1f0c77aa";

/// A gateway whose config file the test rewrites between reloads.
pub struct Reloadable {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub path: PathBuf,
}

impl Reloadable {
    /// Starts `ringgate run` on `config` (with `{listen}` and `{admin}` filled in and the
    /// admin token [`TOKEN`] in `admin.token` beside it).
    pub fn start(config: &str) -> Reloadable {
        Reloadable::start_with(config, &[])
    }

    /// The same, with more `(name, contents)` files beside the config.
    pub fn start_with(config: &str, files: &[(&str, &str)]) -> Reloadable {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = temp_dir("reload");
        std::fs::write(dir.join("admin.token"), TOKEN).unwrap();
        for (name, contents) in files {
            std::fs::write(dir.join(name), contents).unwrap();
        }
        let path = dir.join("ringgate.toml");
        let text = config
            .replace("{listen}", &listen.to_string())
            .replace("{admin}", &admin.to_string());
        std::fs::write(&path, text).unwrap();
        let proc = spawn_bin(&dir, &["run", "--config", path.to_str().unwrap()]);
        let gw = Reloadable {
            proc,
            listen,
            admin,
            path,
        };
        assert!(
            wait_for_port(listen, Duration::from_secs(15))
                && wait_for_port(admin, Duration::from_secs(15)),
            "gateway did not start: {}",
            gw.proc.stderr()
        );
        gw
    }

    pub fn text(&self, config: &str) -> String {
        config
            .replace("{listen}", &self.listen.to_string())
            .replace("{admin}", &self.admin.to_string())
    }

    /// Rewrites the config file whole (written aside, then renamed, as an operator's
    /// tooling would: a reload never reads half a file).
    pub fn write(&self, config: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, self.text(config)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// One admin request; `None` when no full answer came within `timeout`.
    pub fn admin_within(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.admin, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n"
        )
        .ok()?;
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let all = String::from_utf8_lossy(&all).into_owned();
        let (head, body) = all.split_once("\r\n\r\n")?;
        Some((status_of(head), body.to_string()))
    }

    pub fn admin(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        self.admin_within(method, path, token, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no admin answer to {method} {path}"))
    }

    pub fn reload(&self) -> serde_json::Value {
        let (status, body) = self.admin("POST", "/reload", Some(TOKEN));
        assert_eq!(status, 200, "{body}\n{}", self.proc.stderr());
        serde_json::from_str(&body).unwrap()
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin("GET", path, None);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn generation(&self) -> u64 {
        self.json("/config")["generation"].as_u64().unwrap()
    }

    pub fn get(&self, path: &str) -> Response {
        let mut s = TcpStream::connect(self.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        ResponseReader::default().read(&mut s, false)
    }

    /// Every shard's view of every target of upstream `upstream` (by position).
    pub fn target_states(&self, upstream: usize) -> Vec<Vec<String>> {
        let up = self.json("/upstreams");
        up["upstreams"][upstream]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["state"].as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    }
}
