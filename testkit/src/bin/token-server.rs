//! A registry token server for the test script.
//!
//! It speaks the Docker registry token protocol closely enough for Debian's
//! docker-registry 2.8 (`auth.token`) and the Docker engine:
//!
//! - `GET /token?service=S&scope=...` with HTTP Basic credentials (the
//!   "Token Authentication Specification"); `offline_token=true` adds a
//!   `refresh_token`, which is how `docker login` gets an identity token.
//!   Without credentials the token is anonymous and grants nothing.
//! - `POST /token` with a form body (the "OAuth2 token authentication"):
//!   `grant_type=password` and `grant_type=refresh_token`; `client_id` and
//!   `service` are required, as a strict server requires them.
//!
//! Tokens are RS256 JWTs whose header carries the signing certificate as
//! `x5c`; the registry verifies that certificate against its
//! `rootcertbundle` and then checks `iss`, `aud` (the service), `exp` and
//! `nbf`. The one configured user gets `pull` and `push` on every
//! repository named in the scopes, and nothing else.
//!
//! Every request to `/token` is logged to `--log` as one JSON line that
//! names the grant, client, account, scopes and status, and never a
//! password or token: tests read it to prove which grant a client used.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// Lifetime of an access token, in seconds.
const EXPIRES_IN: i64 = 300;

#[derive(Parser)]
#[command(about = "A Docker registry token server for tests")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:5001.
    #[arg(long)]
    listen: SocketAddr,
    /// The registry's `auth.token.service`: the tokens' audience.
    #[arg(long)]
    service: String,
    /// The registry's `auth.token.issuer`.
    #[arg(long)]
    issuer: String,
    /// The RSA private key (PEM) that signs the tokens.
    #[arg(long)]
    key: PathBuf,
    /// The key's certificate (PEM): sent as the tokens' `x5c` header, and
    /// the registry's `rootcertbundle`.
    #[arg(long)]
    cert: PathBuf,
    /// The one accepted username.
    #[arg(long)]
    user: String,
    /// Its password (from the environment, so that it stays out of `ps`).
    #[arg(long, env = "TOKEN_SERVER_PASSWORD", hide_env_values = true)]
    password: String,
    /// File that receives one JSON line per request.
    #[arg(long)]
    log: PathBuf,
}

struct Server {
    service: String,
    issuer: String,
    user: String,
    password: String,
    key: EncodingKey,
    x5c: Vec<String>,
    /// Refresh token -> the user it was issued to.
    refresh_tokens: Mutex<HashMap<String, String>>,
    log: Mutex<File>,
}

/// A request's parameters (query string or form body), in order; `scope`
/// may repeat.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: &[u8]) -> Self {
        Params(form_urlencoded::parse(raw).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every requested scope: `scope` may repeat and may hold a
    /// space-separated list.
    fn scopes(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split_whitespace().map(str::to_owned))
            .collect()
    }
}

/// What the log records about a request besides its status.
struct Entry {
    grant_type: Option<String>,
    client_id: Option<String>,
    account: Option<String>,
    scopes: Vec<String>,
}

/// One line of the request log.
#[derive(Serialize)]
struct LogLine<'a> {
    at: String,
    method: &'a str,
    grant_type: Option<String>,
    client_id: Option<String>,
    account: Option<String>,
    scopes: Vec<String>,
    status: u16,
}

/// A refused request: status and message.
struct Refusal(StatusCode, String);

fn bad_request(message: &str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, message.to_owned())
}

fn unauthorized(message: &str) -> Refusal {
    Refusal(StatusCode::UNAUTHORIZED, message.to_owned())
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Refusal(status, message) = self;
        let error = if status == StatusCode::UNAUTHORIZED {
            "invalid_grant"
        } else if status == StatusCode::BAD_REQUEST {
            "invalid_request"
        } else {
            "server_error"
        };
        // `details` is what the Docker engine shows for a 401; `error` and
        // `error_description` are OAuth2's names.
        let body = json!({"error": error, "error_description": message, "details": message});
        (status, Json(body)).into_response()
    }
}

#[derive(Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: String,
    access: Vec<Access>,
}

/// The grant for one scope `repository:NAME:ACTIONS`: its `pull` and
/// `push` actions; other resource types and actions get nothing.
fn grant(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind != "repository" || name.is_empty() {
        return None;
    }
    let mut granted: Vec<String> = Vec::new();
    for action in actions.split(',') {
        if matches!(action, "pull" | "push") && !granted.iter().any(|a| a == action) {
            granted.push(action.to_owned());
        }
    }
    (!granted.is_empty()).then(|| Access {
        kind: kind.to_owned(),
        name: name.to_owned(),
        actions: granted,
    })
}

/// `Authorization: Basic ...` as (user, password); `Some(None)` for an
/// Authorization header that is not valid Basic.
fn basic_credentials(headers: &HeaderMap) -> Option<Option<(String, String)>> {
    let value = headers.get(header::AUTHORIZATION)?;
    Some((|| {
        let (scheme, encoded) = value.to_str().ok()?.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (user, password) = decoded.split_once(':')?;
        Some((user.to_owned(), password.to_owned()))
    })())
}

impl Server {
    fn valid(&self, user: &str, password: &str) -> bool {
        user == self.user && password == self.password
    }

    /// The service must be ours when named (`required` for the OAuth2 form).
    fn check_service(&self, params: &Params, required: bool) -> Result<(), Refusal> {
        match params.get("service") {
            Some(service) if service == self.service => Ok(()),
            Some(_) => Err(bad_request("unknown service")),
            None if required => Err(bad_request("service is required")),
            None => Ok(()),
        }
    }

    fn new_refresh_token(&self, user: &str) -> String {
        let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let mut tokens = self.refresh_tokens.lock().expect("refresh token map");
        tokens.insert(token.clone(), user.to_owned());
        token
    }

    /// A signed access token for `account` (anonymous: no access) and the
    /// scopes granted in it; also when it was issued, as RFC 3339.
    fn access_token(
        &self,
        account: Option<&str>,
        scopes: &[String],
    ) -> Result<(String, String, String), Refusal> {
        let now = OffsetDateTime::now_utc();
        let access: Vec<Access> = match account {
            Some(_) => scopes.iter().filter_map(|s| grant(s)).collect(),
            None => Vec::new(),
        };
        let granted = access
            .iter()
            .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        let claims = Claims {
            iss: &self.issuer,
            sub: account.unwrap_or(""),
            aud: &self.service,
            exp: now.unix_timestamp() + EXPIRES_IN,
            nbf: now.unix_timestamp(),
            iat: now.unix_timestamp(),
            jti: Uuid::new_v4().to_string(),
            access,
        };
        let header = Header {
            typ: Some("JWT".to_owned()),
            x5c: Some(self.x5c.clone()),
            ..Header::new(Algorithm::RS256)
        };
        let fail = |e: &dyn std::fmt::Display| {
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot sign: {e}"),
            )
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| fail(&e))?;
        let issued_at = now.format(&Rfc3339).map_err(|e| fail(&e))?;
        Ok((token, granted, issued_at))
    }

    /// `GET /token`: Basic credentials or none.
    fn answer_get(
        &self,
        params: &Params,
        credentials: Option<Option<(String, String)>>,
    ) -> Result<Value, Refusal> {
        self.check_service(params, false)?;
        let account = match credentials {
            None => None,
            Some(Some((user, password))) if self.valid(&user, &password) => Some(user),
            Some(_) => return Err(unauthorized("incorrect username or password")),
        };
        let (token, _, issued_at) = self.access_token(account.as_deref(), &params.scopes())?;
        let mut body = json!({
            "token": token,
            "access_token": token,
            "expires_in": EXPIRES_IN,
            "issued_at": issued_at,
        });
        if let Some(user) = &account
            && params.get("offline_token") == Some("true")
        {
            body["refresh_token"] = json!(self.new_refresh_token(user));
        }
        Ok(body)
    }

    /// `POST /token`: the OAuth2 password and refresh_token grants.
    fn answer_post(&self, params: &Params) -> Result<Value, Refusal> {
        if params.get("client_id").is_none_or(str::is_empty) {
            return Err(bad_request("client_id is required"));
        }
        self.check_service(params, true)?;
        let (account, refresh_token) = match params.get("grant_type") {
            Some("password") => {
                let user = params.get("username").unwrap_or_default();
                let password = params.get("password").unwrap_or_default();
                if !self.valid(user, password) {
                    return Err(unauthorized("incorrect username or password"));
                }
                let offline = params.get("access_type") == Some("offline");
                (
                    user.to_owned(),
                    offline.then(|| self.new_refresh_token(user)),
                )
            }
            Some("refresh_token") => {
                let token = params.get("refresh_token").unwrap_or_default();
                let tokens = self.refresh_tokens.lock().expect("refresh token map");
                match tokens.get(token) {
                    Some(user) => (user.clone(), None),
                    None => return Err(unauthorized("unknown refresh token")),
                }
            }
            Some(_) => return Err(bad_request("unsupported grant_type")),
            None => return Err(bad_request("grant_type is required")),
        };
        let (token, granted, issued_at) = self.access_token(Some(&account), &params.scopes())?;
        let mut body = json!({
            "access_token": token,
            "expires_in": EXPIRES_IN,
            "issued_at": issued_at,
            "scope": granted,
        });
        if let Some(refresh_token) = refresh_token {
            body["refresh_token"] = json!(refresh_token);
        }
        Ok(body)
    }

    /// Writes the request's log line and turns the answer into a response.
    fn finish(&self, method: &str, entry: Entry, answer: Result<Value, Refusal>) -> Response {
        let response = match answer {
            Ok(body) => (StatusCode::OK, Json(body)).into_response(),
            Err(refusal) => refusal.into_response(),
        };
        let line = LogLine {
            at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            method,
            grant_type: entry.grant_type,
            client_id: entry.client_id,
            account: entry.account,
            scopes: entry.scopes,
            status: response.status().as_u16(),
        };
        let line = serde_json::to_string(&line).expect("a log line serializes");
        let mut log = self.log.lock().expect("log file");
        if let Err(e) = writeln!(log, "{line}") {
            eprintln!("token-server: cannot write the log: {e}");
        }
        response
    }
}

async fn get_token(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = Params::parse(query.unwrap_or_default().as_bytes());
    let credentials = basic_credentials(&headers);
    let entry = Entry {
        grant_type: Some(
            if credentials.is_some() {
                "basic_get"
            } else {
                "anonymous"
            }
            .to_owned(),
        ),
        client_id: params.get("client_id").map(str::to_owned),
        account: match &credentials {
            Some(Some((user, _))) => Some(user.clone()),
            _ => params.get("account").map(str::to_owned),
        },
        scopes: params.scopes(),
    };
    let answer = server.answer_get(&params, credentials);
    server.finish("GET", entry, answer)
}

async fn post_token(State(server): State<Arc<Server>>, body: axum::body::Bytes) -> Response {
    let params = Params::parse(&body);
    let account = match params.get("grant_type") {
        Some("refresh_token") => {
            let tokens = server.refresh_tokens.lock().expect("refresh token map");
            params
                .get("refresh_token")
                .and_then(|t| tokens.get(t).cloned())
        }
        _ => params.get("username").map(str::to_owned),
    };
    let entry = Entry {
        grant_type: params.get("grant_type").map(str::to_owned),
        client_id: params.get("client_id").map(str::to_owned),
        account,
        scopes: params.scopes(),
    };
    let answer = server.answer_post(&params);
    server.finish("POST", entry, answer)
}

/// The certificates of a PEM file as base64 DER, as `x5c` wants them.
fn x5c_chain(pem: &str) -> anyhow::Result<Vec<String>> {
    let mut chain = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match (line, current.as_mut()) {
            ("-----BEGIN CERTIFICATE-----", None) => current = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(_)) => {
                let body = current.take().unwrap_or_default();
                STANDARD
                    .decode(&body)
                    .context("certificate is not base64")?;
                chain.push(body);
            }
            (line, Some(body)) => body.push_str(line),
            _ => {}
        }
    }
    if chain.is_empty() {
        bail!("no CERTIFICATE block");
    }
    Ok(chain)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key_pem = std::fs::read(&args.key).with_context(|| format!("reading {:?}", args.key))?;
    let cert_pem =
        std::fs::read_to_string(&args.cert).with_context(|| format!("reading {:?}", args.cert))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("opening {:?}", args.log))?;
    let server = Arc::new(Server {
        service: args.service,
        issuer: args.issuer,
        user: args.user,
        password: args.password,
        key: EncodingKey::from_rsa_pem(&key_pem).context("signing key")?,
        x5c: x5c_chain(&cert_pem).with_context(|| format!("certificate {:?}", args.cert))?,
        refresh_tokens: Mutex::new(HashMap::new()),
        log: Mutex::new(log),
    });
    let app = Router::new()
        .route("/token", get(get_token).post(post_token))
        .with_state(server);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("token-server: listening on {}", args.listen);
    axum::serve(listener, app).await?;
    Ok(())
}
