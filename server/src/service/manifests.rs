//! `stagecache.v1.Manifests`: asset sets, accepted only when every blob is present.

use super::{caller, namespace, AppState, Permission};
use crate::error::ServerError;
use stagecache_proto::v1::manifests_server::Manifests;
use stagecache_proto::v1::{
    GetManifestRequest, GetManifestResponse, PutManifestRequest, PutManifestResponse,
};
use stagecache_proto::{Digest, Manifest, RuleError};
use tonic::{Request, Response, Status};

pub struct ManifestsService {
    state: AppState,
}

impl ManifestsService {
    pub fn new(state: AppState) -> Self {
        ManifestsService { state }
    }
}

#[tonic::async_trait]
impl Manifests for ManifestsService {
    async fn put(
        &self,
        request: Request<PutManifestRequest>,
    ) -> Result<Response<PutManifestResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        caller.check(Permission::Write, &namespace(&req.namespace)?)?;
        let wire = req.manifest.ok_or_else(|| {
            ServerError::from(RuleError::Missing {
                field: "manifest".into(),
            })
        })?;
        let manifest =
            Manifest::from_proto(&wire).map_err(|e| ServerError::from(e.within("manifest")))?;
        let total_bytes = manifest.total_bytes();
        let file_count = manifest.entries().len() as u64;
        let digest = self.state.store.put_manifest(manifest).await?;
        tracing::info!(%digest, file_count, total_bytes, "manifest stored");
        Ok(Response::new(PutManifestResponse {
            digest: Some(digest.to_proto()),
            total_bytes,
            file_count,
        }))
    }

    async fn get(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        caller.check(Permission::Read, &namespace(&req.namespace)?)?;
        let d = Digest::from_required("digest", req.digest.as_ref()).map_err(ServerError::from)?;
        match self.state.store.get_manifest(d).await? {
            Some(m) => Ok(Response::new(GetManifestResponse {
                digest: Some(d.to_proto()),
                manifest: Some(m.to_proto()),
            })),
            None => Err(Status::not_found(format!("manifest {d} is not stored"))),
        }
    }
}
