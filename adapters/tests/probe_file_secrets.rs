//! The server reads the files a probe file's `http:` blocks name (never the agents): a
//! relative path from the probe file's directory, contents into the pool, and a file it cannot
//! or must not read (missing, a FIFO, a device, too large, not text) refused at load, naming
//! the block, the key and the path, without blocking.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use probermesh_adapters::probe_file::ProbeFileOnDisk;
use probermesh_core::model::http_module::SecretSource;
use probermesh_core::model::{ProbeConfig, ProbeModule};
use probermesh_core::ports::PoolSource;

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("pm-probe-secrets-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn probe_file(dir: &Path, client: &str) -> std::path::PathBuf {
    let path = dir.join("probe.yaml");
    std::fs::write(
        &path,
        format!(
            "prober_configs:\n  - prober_type: http\n    region: web\n    targets: [https://198.18.0.10/]\n    http:\n      http_client_config:\n{client}"
        ),
    )
    .expect("writing the probe file");
    path
}

/// Loads on a thread, so that a load that blocks fails the test instead of hanging it.
fn load(path: &Path) -> Result<Vec<ProbeConfig>, String> {
    let source = ProbeFileOnDisk::new(path);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(source.load().map_err(|e| e.to_string()));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the load returns (it must not block on a FIFO)")
}

#[test]
fn referenced_files_are_read_by_the_server_relative_to_the_probe_file() {
    let dir = Dir::new("ok");
    std::fs::create_dir_all(dir.0.join("secrets")).unwrap();
    std::fs::write(dir.0.join("secrets/token"), "tok-123\n").unwrap();
    let pem = rcgen::generate_simple_self_signed(vec!["ca.test".into()])
        .unwrap()
        .cert
        .pem();
    std::fs::write(dir.0.join("ca.pem"), &pem).unwrap();
    let path = probe_file(
        &dir.0,
        "        bearer_token_file: secrets/token\n        tls_config:\n          ca_file: ca.pem\n",
    );
    let configs = load(&path).expect("a valid probe file");
    let ProbeModule::Http(http) = &configs[0].module else {
        panic!("an HTTP block");
    };
    let Some(SecretSource::File(token)) = &http.client.bearer_token else {
        panic!("a token file");
    };
    assert_eq!(token.path(), "secrets/token");
    assert_eq!(
        http.client
            .bearer_token
            .as_ref()
            .and_then(SecretSource::value),
        Some("tok-123")
    );
    let ca = http.client.tls.ca_file.as_ref().expect("a CA file");
    assert_eq!(ca.path(), "ca.pem");
    assert_eq!(ca.contents().map(|c| c.expose()), Some(pem.as_str()));
}

#[test]
fn files_the_server_cannot_or_must_not_read_fail_the_load_naming_them() {
    let dir = Dir::new("bad");
    let fifo = dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::write(dir.0.join("big-token"), "x".repeat(8 * 1024 + 1)).unwrap();
    std::fs::write(dir.0.join("binary"), [0xff_u8, 0xfe, 0x00]).unwrap();
    let name = dir.0.join("probe.yaml").display().to_string();
    for (client, expected) in [
        (
            "        bearer_token_file: missing\n",
            "prober_configs[0].http.http_client_config.bearer_token_file: \"missing\": cannot be read by the server: No such file or directory (os error 2)".to_owned(),
        ),
        (
            "        bearer_token_file: fifo\n",
            "prober_configs[0].http.http_client_config.bearer_token_file: \"fifo\": cannot be read by the server: it is a FIFO (named pipe), not a regular file".to_owned(),
        ),
        (
            "        basic_auth:\n          username: u\n          password_file: /dev/zero\n",
            "prober_configs[0].http.http_client_config.basic_auth.password_file: \"/dev/zero\": cannot be read by the server: it is a character device, not a regular file".to_owned(),
        ),
        (
            "        bearer_token_file: big-token\n",
            "prober_configs[0].http.http_client_config.bearer_token_file: \"big-token\": cannot be read by the server: it is 8193 bytes long; the limit is 8192 bytes".to_owned(),
        ),
        (
            "        tls_config:\n          ca_file: binary\n",
            "prober_configs[0].http.http_client_config.tls_config.ca_file: \"binary\": is not UTF-8 text".to_owned(),
        ),
    ] {
        let path = probe_file(&dir.0, client);
        let error = load(&path).expect_err(client);
        assert_eq!(error, format!("probe file {name}: {expected}"), "{client}");
    }
}

#[test]
fn the_servers_own_secrets_cannot_be_named() {
    let dir = Dir::new("private");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("server-key.pem"), "KEY").unwrap();
    std::fs::write(dir.0.join("agents.token"), "tok").unwrap();
    // A link to the key is resolved before the comparison.
    std::os::unix::fs::symlink(data.join("server-key.pem"), dir.0.join("innocent")).unwrap();
    for (client, own) in [
        (
            "        basic_auth:\n          username: u\n          password_file: data/server-key.pem\n",
            data.clone(),
        ),
        ("        bearer_token_file: innocent\n", data.clone()),
        (
            "        bearer_token_file: agents.token\n",
            dir.0.join("agents.token"),
        ),
    ] {
        let path = probe_file(&dir.0, client);
        let source =
            ProbeFileOnDisk::new(&path).keeping_private([data.clone(), dir.0.join("agents.token")]);
        let error = source.load().expect_err(client).to_string();
        let own = std::fs::canonicalize(own).unwrap();
        assert!(
            error.contains(&format!(
                "is the server's own {} (a token or its key); a probe file may not send the server's secrets to agents",
                own.display()
            )),
            "{client}: {error}"
        );
    }
}
