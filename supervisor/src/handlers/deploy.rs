//! `DeployDevnet` / `DeployLocal` → render, validate, check ports, spawn; answer `Status`.

use dwbase_proto::{DevnetSpec, LocalSpec, Response};

use crate::server::Ctx;

pub(super) async fn devnet(ctx: &Ctx, spec: DevnetSpec) -> Response {
    ctx.runner.deploy_devnet(spec).await.unwrap_or_else(super::gone)
}

pub(super) async fn local(ctx: &Ctx, spec: LocalSpec) -> Response {
    ctx.runner.deploy_local(spec).await.unwrap_or_else(super::gone)
}
