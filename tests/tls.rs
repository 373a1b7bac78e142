//! TLS on both sides: channels over https with a private CA and with client certificates
//! (mTLS to the PSP), and the merchant listener over https, optionally requiring merchant
//! certificates. Certificates are made fresh by each test (rcgen).

mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::*;

/// A private CA and certificates it signed, written as PEM files into a scratch folder.
struct Pki {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let dir = scratch_dir();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self {
            dir,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes NAME.pem and NAME.key for a certificate valid for `localhost`; returns the hex
    /// SHA-256 of the certificate's DER.
    fn issue(&self, name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(cert.der()))
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

fn https_client<B>(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = paygate::tls::client_config(Some(ca), identity).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// `/_sim/stats` of a simulator served over TLS (and mTLS when `identity` is given).
async fn tls_stats(pki: &Pki, port: &str, identity: Option<(&Path, &Path)>) -> Value {
    let client = https_client::<Empty<Bytes>>(&pki.dir.join("ca.pem"), identity);
    let uri: http::Uri = format!("https://localhost:{port}/_sim/stats")
        .parse()
        .unwrap();
    let response = client.get(uri).await.expect("stats over TLS");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

fn port_of(base: &str) -> &str {
    base.rsplit(':').next().unwrap()
}

#[tokio::test]
async fn channels_over_tls_with_a_private_ca() {
    let pki = Pki::new();
    let _ = pki.issue("psp");
    let sim = Process::mock_psp(&[
        "--name",
        "secure",
        "--tls-cert",
        &pki.path("psp.pem"),
        "--tls-key",
        &pki.path("psp.key"),
    ])
    .await;
    assert!(sim.base.starts_with("https://"), "{}", sim.base);
    let port = port_of(&sim.base);
    let routes = format!(
        "{}
[[channels]]
name = \"secure\"
url = \"https://localhost:{port}\"
tls = {{ ca_file = \"{}\" }}

[[channels]]
name = \"untrusted\"
url = \"https://localhost:{port}\"

[[rules]]
name = \"eur\"
channels = [\"secure\"]
[rules.match]
currencies = [\"EUR\"]

[[rules]]
name = \"usd\"
channels = [\"untrusted\"]
",
        base_config(),
        pki.path("ca.pem")
    );
    let gateway = Process::gateway(&routes).await;
    let answer = pay(&gateway, &card_payment(100, "EUR")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json);
    assert_eq!(answer.json["status"], "succeeded");

    // Without the CA the handshake fails before anything is sent: unavailable, not charged.
    let refused = pay(&gateway, &card_payment(100, "USD")).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(refused.json["error"]["type"], "all_channels_failed");
    assert_eq!(tls_stats(&pki, port, None).await["payments"], 1);
}

#[tokio::test]
async fn client_certificates_to_the_psp() {
    let pki = Pki::new();
    let _ = pki.issue("psp");
    let _ = pki.issue("gateway");
    let sim = Process::mock_psp(&[
        "--name",
        "mtls",
        "--tls-cert",
        &pki.path("psp.pem"),
        "--tls-key",
        &pki.path("psp.key"),
        "--client-ca",
        &pki.path("ca.pem"),
    ])
    .await;
    let port = port_of(&sim.base);
    let routes = format!(
        "{}
[[channels]]
name = \"with-cert\"
url = \"https://localhost:{port}\"
tls = {{ ca_file = \"ca.pem\", client_cert = \"gateway.pem\", client_key = \"gateway.key\" }}

[[channels]]
name = \"without-cert\"
url = \"https://localhost:{port}\"
tls = {{ ca_file = \"ca.pem\" }}

[[rules]]
name = \"eur\"
channels = [\"with-cert\"]
[rules.match]
currencies = [\"EUR\"]

[[rules]]
name = \"usd\"
channels = [\"without-cert\"]
",
        base_config()
    );
    // Relative TLS paths resolve against the routes file's folder.
    let routes_path = pki.dir.join("routes.toml");
    std::fs::write(&routes_path, &routes).unwrap();
    let gateway = Process::gateway_in(&routes_path).await;
    assert_eq!(
        pay(&gateway, &card_payment(100, "EUR")).await.status,
        StatusCode::CREATED
    );
    // Without a certificate, TLS 1.3 reports the refusal only after the request was written,
    // so paygate cannot prove the PSP did not act on it: pending, never re-sent.
    let refused = pay(&gateway, &card_payment(100, "USD")).await;
    assert_eq!(refused.status, StatusCode::ACCEPTED, "{:?}", refused.json);
    assert_eq!(refused.json["attempts"][0]["outcome"], "error");
    let identity = (pki.dir.join("gateway.pem"), pki.dir.join("gateway.key"));
    let stats = tls_stats(&pki, port, Some((&identity.0, &identity.1))).await;
    assert_eq!(stats["payments"], 1);
}

#[tokio::test]
async fn merchants_over_https_with_optional_client_certificates() {
    let pki = Pki::new();
    pki.issue("server");
    let merchant_cert = pki.issue("merchant");
    let sim = Process::mock_psp(&["--name", "psp"]).await;
    let routes = base_config().replace(
        "[server]\n",
        &format!(
            "[server]\ntls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem")
        ),
    ) + &format!(
        "\n[[merchants]]\nid = \"certified\"\nclient_cert_sha256 = \"{merchant_cert}\"\n"
    ) + &channel("psp", &sim, "")
        + "\n[[rules]]\nname = \"all\"\nchannels = [\"psp\"]\n";
    let gateway = Process::gateway(&routes).await;
    assert!(gateway.base.starts_with("https://"), "{}", gateway.base);
    let url = format!("https://localhost:{}/v1/payments", port_of(&gateway.base));
    let request = || {
        http::Request::post(url.as_str())
            .header("authorization", format!("Bearer {KEY}"))
            .body(Full::new(Bytes::from(card_payment(100, "EUR").to_string())))
            .unwrap()
    };
    let ca = pki.dir.join("ca.pem");
    let (cert, key) = (pki.dir.join("merchant.pem"), pki.dir.join("merchant.key"));
    let with_cert = https_client::<Full<Bytes>>(&ca, Some((&cert, &key)));
    let response = with_cert.request(request()).await.expect("paid over mTLS");
    assert_eq!(response.status(), StatusCode::CREATED);

    // The certificate alone identifies a merchant that registered it.
    let anonymous = http::Request::post(url.as_str())
        .body(Full::new(Bytes::from(card_payment(100, "EUR").to_string())))
        .unwrap();
    let response = with_cert
        .request(anonymous)
        .await
        .expect("paid by certificate");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let paid: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(paid["merchant"], "certified");

    let without_cert = https_client::<Full<Bytes>>(&ca, None);
    assert!(
        without_cert.request(request()).await.is_err(),
        "a merchant without a certificate is refused"
    );
    assert_eq!(sim.stats().await["payments"], 2);
}
