//! `lb api-server` and `lb kubeconfig`: the store served over the Kubernetes API
//! (`crate::api`), and the kubeconfig kubectl uses to reach it.

use std::{net::SocketAddr, path::Path};

use anyhow::Result;
use clap::Args;

use super::AllocationArgs;
use crate::api;

#[derive(Args)]
pub struct ApiServerArgs {
    /// Address and port to serve HTTPS on (loopback by default; another address
    /// lets other machines' agents and kubectl in, with the token).
    #[arg(long, default_value = api::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub alloc: AllocationArgs,
}

pub fn run(a: &ApiServerArgs, store: &Path) -> Result<()> {
    api::run(api::ApiOptions {
        store: store.to_path_buf(),
        listen: a.listen,
        ranges: a.alloc.parse()?,
    })
}

#[derive(Args)]
pub struct KubeconfigArgs {
    /// The server URL to write (default: where `lb api-server` listens).
    #[arg(long)]
    pub server: Option<String>,
}

pub fn kubeconfig(a: &KubeconfigArgs, store: &Path) -> Result<()> {
    print!(
        "{}",
        api::credentials::kubeconfig(store, a.server.as_deref())?
    );
    Ok(())
}
