//! The HTTP surface, in relayauth's shapes: camelCase bodies (snake_case aliases accepted),
//! `{"error", "code"}` errors, RFC 3339 times. Each handler checks the credential first, then
//! reads the body, then does its work under the store's lock and writes the state directory
//! before answering, so an answered change survives a restart.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::app::{Issuer, secs};
use super::audit::{ACTIONS, AuditQuery, DEFAULT_LIMIT, MAX_LIMIT, decode_cursor};
use super::delegation::DelegateRequest;
use super::error::{ApiError, ApiResult};
use super::extract::{Params, RawBody, params, required};
use super::identities::NewIdentity;
use super::tokens::IssueRequest;
use crate::token::Audience;

type App = State<Arc<Issuer>>;

/// The router over `issuer`.
pub fn router(issuer: Arc<Issuer>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/health", get(health))
        .route("/v1/identities", post(create_identity))
        .route("/v1/identities/{id}", get(get_identity))
        .route("/v1/identities/{id}/suspend", post(suspend_identity))
        .route("/v1/tokens", post(issue_tokens))
        .route("/v1/tokens/refresh", post(refresh_tokens))
        .route("/v1/tokens/revoke", post(revoke_tokens))
        .route("/v1/tokens/revocation", get(revocation))
        .route("/v1/tokens/introspect", get(introspect))
        .route("/v1/tokens/delegate", post(delegate))
        .route("/v1/audit", get(audit))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(issuer)
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint on this development issuer")
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

async fn jwks(State(app): App) -> Response {
    let mut res = Json(app.jwks().clone()).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    res
}

async fn health(State(app): App) -> Json<Value> {
    Json(json!({"status": "ok", "iss": app.iss(), "development": true}))
}

fn path_id(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    p.map(|Path(id)| id)
        .map_err(|e| ApiError::invalid(format!("the identity id in the path is malformed: {e}")))
}

fn created(v: Value) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// Run `op` on the store, write the state directory, and answer with `op`'s result (a
/// refusal that was audited is written too).
async fn mutate<T>(
    app: &Arc<Issuer>,
    op: impl FnOnce(&mut super::store::Store, &Issuer) -> ApiResult<T>,
) -> ApiResult<T> {
    let result = {
        let mut store = app.store.lock();
        op(&mut store, app)
    };
    app.flush().await?;
    result
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateIdentityBody {
    name: String,
    #[serde(alias = "org_id")]
    org_id: String,
    #[serde(alias = "workspace_id")]
    workspace_id: String,
    #[serde(alias = "sponsor_id")]
    sponsor_id: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default, alias = "sponsor_chain")]
    sponsor_chain: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

async fn create_identity(
    State(app): App,
    headers: HeaderMap,
    body: RawBody,
) -> ApiResult<Response> {
    app.require_admin(&headers)?;
    let b: CreateIdentityBody = body.json()?;
    if let Some(m) = &b.metadata
        && m.values().any(|v| !v.is_string())
    {
        return Err(ApiError::invalid("metadata values must be strings"));
    }
    let req = NewIdentity {
        name: b.name,
        org_id: b.org_id,
        workspace_id: b.workspace_id,
        sponsor_id: b.sponsor_id,
        scopes: b.scopes.unwrap_or_default(),
        sponsor_chain: b.sponsor_chain,
        metadata: b.metadata.unwrap_or_default(),
    };
    let now = secs(SystemTime::now());
    let identity = mutate(&app, |s, _| s.create_identity(req, now)).await?;
    Ok(created(identity.to_json()))
}

async fn get_identity(
    State(app): App,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    app.require_admin(&headers)?;
    let id = path_id(id)?;
    let store = app.store.lock();
    store
        .identities
        .get(&id)
        .map(|i| Json(i.to_json()))
        .ok_or_else(|| ApiError::identity_not_found(&id))
}

#[derive(Deserialize)]
struct SuspendBody {
    reason: String,
}

async fn suspend_identity(
    State(app): App,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: RawBody,
) -> ApiResult<Json<Value>> {
    app.require_admin(&headers)?;
    let id = path_id(id)?;
    let b: SuspendBody = body.json()?;
    let now = secs(SystemTime::now());
    let identity = mutate(&app, |s, _| s.suspend_identity(&id, &b.reason, now)).await?;
    Ok(Json(identity.to_json()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IssueBody {
    #[serde(alias = "identity_id")]
    identity_id: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    audience: Option<Audience>,
    #[serde(default, alias = "expires_in")]
    expires_in: Option<u64>,
    #[serde(default, alias = "refresh_token_ttl_seconds")]
    refresh_token_ttl_seconds: Option<u64>,
}

async fn issue_tokens(State(app): App, headers: HeaderMap, body: RawBody) -> ApiResult<Response> {
    app.require_admin(&headers)?;
    let b: IssueBody = body.json()?;
    let req = IssueRequest {
        identity_id: b.identity_id,
        scopes: b.scopes,
        audience: b.audience.map(|a| a.0),
        expires_in: b.expires_in,
        refresh_ttl: b.refresh_token_ttl_seconds,
    };
    let now = secs(SystemTime::now());
    let pair = mutate(&app, |s, app| s.issue(&app.minter(), req, now)).await?;
    Ok(created(pair.to_json()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshBody {
    #[serde(alias = "refresh_token")]
    refresh_token: String,
}

async fn refresh_tokens(State(app): App, body: RawBody) -> ApiResult<Json<Value>> {
    let b: RefreshBody = body.json()?;
    let now = secs(SystemTime::now());
    let pair = mutate(&app, |s, app| {
        s.refresh(&app.minter(), &b.refresh_token, now)
    })
    .await?;
    Ok(Json(pair.to_json()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevokeBody {
    #[serde(default, alias = "token_id")]
    token_id: Option<String>,
    #[serde(default, alias = "session_id")]
    session_id: Option<String>,
    #[serde(default, alias = "identity_id")]
    identity_id: Option<String>,
}

async fn revoke_tokens(
    State(app): App,
    headers: HeaderMap,
    body: RawBody,
) -> ApiResult<StatusCode> {
    app.require_admin(&headers)?;
    let b: RevokeBody = body.json()?;
    let given: Vec<(&str, String)> = [
        ("tokenId", b.token_id),
        ("sessionId", b.session_id),
        ("identityId", b.identity_id),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v.trim().to_owned())))
    .collect();
    let (kind, id) = match given.as_slice() {
        [(kind, id)] if !id.is_empty() => (*kind, id.clone()),
        [] => {
            return Err(ApiError::invalid(
                "give one of tokenId, sessionId or identityId",
            ));
        }
        [_] => return Err(ApiError::invalid("the id to revoke is empty")),
        _ => {
            return Err(ApiError::invalid(
                "give only one of tokenId, sessionId or identityId",
            ));
        }
    };
    let now = secs(SystemTime::now());
    mutate(&app, |s, _| {
        let reason = format!("revoked by an admin ({kind} {id})");
        match kind {
            "tokenId" if s.tokens.contains_key(&id) => s.revoke_token(&id, &reason, now),
            "sessionId" if s.sessions.contains_key(&id) => {
                s.revoke_session_tree(&id, &reason, now);
            }
            "identityId" if !s.sessions_of(&id).is_empty() => {
                for sid in s.sessions_of(&id) {
                    s.revoke_session_tree(&sid, &reason, now);
                }
            }
            _ => {
                return Err(ApiError::not_found(format!(
                    "nothing matched: no token, session or identity with tokens has {kind} {id:?}"
                )));
            }
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revocation(State(app): App, headers: HeaderMap, q: Params) -> ApiResult<Json<Value>> {
    let now = SystemTime::now();
    let store = app.store.lock();
    app.require_token_reader(&store, &headers, now)?;
    let q = params(q)?;
    let jti = required(&q, "jti")?;
    Ok(Json(json!({"revoked": store.is_revoked(jti)})))
}

async fn introspect(State(app): App, headers: HeaderMap, q: Params) -> ApiResult<Json<Value>> {
    let now = SystemTime::now();
    let store = app.store.lock();
    app.require_token_reader(&store, &headers, now)?;
    let q = params(q)?;
    let token = required(&q, "token")?;
    match app.check_access_token(&store, token, now) {
        Ok(t) => Ok(Json(
            serde_json::to_value(t.claims()).unwrap_or(Value::Null),
        )),
        Err(_) => Ok(Json(Value::Null)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DelegateBody {
    #[serde(alias = "agent_name")]
    agent_name: String,
    #[serde(alias = "requested_scopes")]
    requested_scopes: Vec<String>,
    #[serde(default, alias = "ttl_seconds")]
    ttl_seconds: Option<u64>,
    #[serde(default, alias = "refresh_token_ttl_seconds")]
    refresh_token_ttl_seconds: Option<u64>,
}

async fn delegate(State(app): App, headers: HeaderMap, body: RawBody) -> ApiResult<Response> {
    let now = SystemTime::now();
    {
        let store = app.store.lock();
        app.require_bearer(&store, &headers, now)?;
    }
    let b: DelegateBody = body.json()?;
    let req = DelegateRequest {
        agent_name: b.agent_name,
        requested_scopes: b.requested_scopes,
        ttl_seconds: b.ttl_seconds,
        refresh_ttl: b.refresh_token_ttl_seconds,
    };
    let done = mutate(&app, |s, app| {
        // Checked again under the same lock as the delegation, so a revocation in between
        // cannot be missed.
        let parent = app.require_bearer(s, &headers, now)?;
        s.delegate(&app.minter(), &parent, req, secs(now))
    })
    .await?;
    let mut v = done.pair.to_json();
    if let Value::Object(m) = &mut v {
        m.insert("identityId".into(), json!(done.child.id));
        m.insert("sessionId".into(), json!(done.pair.session_id));
        m.insert("agentName".into(), json!(done.child.name));
        m.insert("scopes".into(), json!(done.scopes));
        m.insert("sponsorChain".into(), json!(done.child.sponsor_chain));
    }
    Ok(created(v))
}

async fn audit(State(app): App, headers: HeaderMap, q: Params) -> ApiResult<Json<Value>> {
    app.require_admin(&headers)?;
    let q = params(q)?;
    let nonempty = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let action = nonempty("action").map(str::to_owned);
    if let Some(a) = &action
        && !ACTIONS.contains(&a.as_str())
    {
        return Err(ApiError::invalid(format!(
            "unknown audit action {a:?}; known: {}",
            ACTIONS.join(", ")
        )));
    }
    let limit = match nonempty("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n >= 1 && l.bytes().all(|b| b.is_ascii_digit()) => n.min(MAX_LIMIT),
            _ => return Err(ApiError::invalid("limit must be a positive integer")),
        },
    };
    let before = match nonempty("cursor") {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            ApiError::invalid("cursor is not one this issuer gave out (use nextCursor as is)")
        })?),
    };
    let query = AuditQuery {
        action,
        identity_id: nonempty("identityId").map(str::to_owned),
        limit,
        before,
    };
    let store = app.store.lock();
    let (entries, next) = store.audit.query(&query);
    Ok(Json(json!({
        "entries": entries,
        "nextCursor": next,
        "hasMore": next.is_some(),
    })))
}
