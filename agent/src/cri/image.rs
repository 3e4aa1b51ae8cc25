//! CRI `ImageService`.

use std::sync::Arc;

use berth_cri_api::v1::image_service_server::ImageService;
use berth_cri_api::v1::{
    FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest, ImageFsInfoResponse,
    ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest,
    ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use berth_image::{Credentials, ImageRecord};
use tonic::{Request, Response, Status};

use super::{Kind, call, chunked, detached, status};

/// Serves the CRI image API from the image service.
#[derive(Debug, Clone)]
pub struct ImageCri {
    images: Arc<berth_image::ImageService>,
}

impl ImageCri {
    pub fn new(images: Arc<berth_image::ImageService>) -> Self {
        ImageCri { images }
    }

    fn to_cri(&self, r: &ImageRecord) -> Image {
        let (uid, username) = berth_image::manifest::parse_user(&r.user);
        Image {
            id: r.id.to_string(),
            repo_tags: r.repo_tags.clone(),
            repo_digests: r.repo_digests.clone(),
            size: r.size,
            uid: uid.map(|value| Int64Value { value }),
            username,
            spec: Some(ImageSpec {
                image: r.id.to_string(),
                ..Default::default()
            }),
            pinned: self.images.is_pinned(r),
        }
    }
}

fn image_ref(spec: Option<&ImageSpec>) -> Result<String, Status> {
    let image = spec.map(|s| s.image.trim()).unwrap_or_default();
    if image.is_empty() {
        return Err(Status::invalid_argument(
            "image.image is empty: name the image to act on",
        ));
    }
    Ok(image.to_string())
}

#[tonic::async_trait]
impl ImageService for ImageCri {
    async fn stream_images(
        &self,
        req: Request<berth_cri_api::v1::StreamImagesRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<berth_cri_api::v1::StreamImagesResponse>>, Status>
    {
        let filter = req.into_inner().filter;
        let images = self
            .list_images(Request::new(ListImagesRequest { filter }))
            .await?
            .into_inner()
            .images;
        Ok(Response::new(chunked(images, |images| {
            berth_cri_api::v1::StreamImagesResponse { images }
        })))
    }

    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let req = req.into_inner();
        let filter = req
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let span = tracing::trace_span!("ListImages", filter = filter.as_deref().unwrap_or(""));
        call(span, Kind::Read, async {
            let images = match filter {
                None => self.images.list(),
                Some(f) => match self.images.resolve(&f) {
                    Ok(r) => vec![r],
                    Err(berth_image::Error::ImageNotFound(_)) => vec![],
                    Err(e) => return Err(status(e)),
                },
            };
            Ok(ListImagesResponse {
                images: images.iter().map(|r| self.to_cri(r)).collect(),
            })
        })
        .await
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let image = image_ref(req.image.as_ref())?;
        let span = tracing::trace_span!("ImageStatus", image = %image);
        call(span, Kind::Read, async {
            let rec = match self.images.resolve(&image) {
                Ok(r) => r,
                // CRI: an absent image is a nil image, not an error.
                Err(berth_image::Error::ImageNotFound(_)) => {
                    return Ok(ImageStatusResponse::default());
                }
                Err(e) => return Err(status(e)),
            };
            let mut info = std::collections::HashMap::new();
            if req.verbose {
                let spec = self.images.config_json(&rec).map_err(super::status)?;
                let v = serde_json::json!({
                    "chainID": rec.top_chain().map(|c| c.to_string()).unwrap_or_default(),
                    "manifest": rec.manifest.to_string(),
                    // Layers encrypted with ocicrypt, opened with the node's keys at pull.
                    "encrypted": rec.encrypted,
                    // How the signature policy accepted it (absent without a policy).
                    "verified": rec.verified,
                    "imageSpec": spec,
                });
                let mut v = v;
                // Lazily pulled eStargz layers: how much of them is here.
                if let Some((layers, total, cached, fetched)) = self.images.lazy_progress(&rec) {
                    v["lazy"] = serde_json::json!({
                        "layers": layers,
                        "fileBytes": total,
                        "fileBytesOnDisk": cached,
                        "fetchedBytes": fetched,
                    });
                }
                info.insert("info".to_string(), v.to_string());
            }
            Ok(ImageStatusResponse {
                image: Some(self.to_cri(&rec)),
                info,
            })
        })
        .await
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = req.into_inner();
        let image = image_ref(req.image.as_ref())?;
        let creds = match req.auth {
            Some(a) => Some(
                Credentials::from_cri(
                    &a.username,
                    &a.password,
                    &a.auth,
                    &a.server_address,
                    &a.identity_token,
                    &a.registry_token,
                )
                .map_err(|e| Status::invalid_argument(format!("auth: {e}")))?,
            ),
            None => None,
        };
        let span = tracing::info_span!("PullImage", image = %image);
        let images = self.images.clone();
        // The pull runs on its own task, so that it stops cleanly; when this handler is
        // dropped (the client went away or timed out), the guard tells the pull to stop.
        let caller_gone = tokio_util::sync::CancellationToken::new();
        let _stop_when_dropped = caller_gone.clone().drop_guard();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                let rec = images
                    .pull_cancellable(&image, creds, caller_gone)
                    .await
                    .map_err(super::status)?;
                tracing::info!(id = %rec.id, "image pulled");
                Ok(PullImageResponse {
                    image_ref: rec.id.to_string(),
                })
            }),
        )
        .await
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let req = req.into_inner();
        let image = image_ref(req.image.as_ref())?;
        let span = tracing::info_span!("RemoveImage", image = %image);
        let images = self.images.clone();
        call(
            span,
            Kind::Mutation,
            detached(async move {
                images.remove(&image).await.map_err(super::status)?;
                Ok(RemoveImageResponse {})
            }),
        )
        .await
    }

    async fn image_fs_info(
        &self,
        _req: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        call(tracing::trace_span!("ImageFsInfo"), Kind::Read, async {
            let u = self.images.fs_usage().map_err(super::status)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            let fs = FilesystemUsage {
                timestamp: now,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: self.images.snapshots_dir().display().to_string(),
                }),
                used_bytes: Some(UInt64Value {
                    value: u.used_bytes,
                }),
                inodes_used: Some(UInt64Value {
                    value: u.inodes_used,
                }),
            };
            Ok(ImageFsInfoResponse {
                image_filesystems: vec![fs],
                container_filesystems: vec![],
            })
        })
        .await
    }
}
