//! Images as the pod lifecycle sees them: resolve a reference (pulling per the pull policy)
//! to its config defaults and ID, and prepare or release a container's rootfs.

use std::path::Path;

use crate::bundle::ImageDefaults;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0} is not present on the node")]
    NotPresent(String),
    #[error("pulling {image}")]
    Pull {
        image: String,
        #[source]
        source: Box<moat_image::registry::RegistryError>,
    },
    #[error("image reference {image:?}")]
    Reference {
        image: String,
        #[source]
        source: moat_image::RefError,
    },
    #[error("imagePullPolicy of {image}")]
    Policy {
        image: String,
        #[source]
        source: moat_image::UnsupportedPullPolicy,
    },
    #[error("image store")]
    Store(#[from] moat_image::StoreError),
    #[error("image config")]
    Config(#[from] crate::bundle::BundleError),
    /// A scripted failure of a fake.
    #[error("{0}")]
    Fake(String),
}

/// Image lookup and per-container rootfs.
pub trait Images: Send + Sync {
    /// Image config defaults and the image ID (manifest digest); pulls when missing.
    fn resolve(
        &self,
        image: &str,
        policy: Option<&str>,
    ) -> Result<(ImageDefaults, String), ImageError>;
    fn prepare(&self, image: &str, id: &str, target: &Path) -> Result<(), ImageError>;
    fn release(&self, id: &str, target: &Path) -> Result<(), ImageError>;
}

pub struct StoreImages {
    pub store: moat_image::Store,
    pub mounter: Box<dyn moat_image::Mounter + Send + Sync>,
}

impl Images for StoreImages {
    fn resolve(
        &self,
        image: &str,
        policy: Option<&str>,
    ) -> Result<(ImageDefaults, String), ImageError> {
        let r = moat_image::Reference::parse(image).map_err(|source| ImageError::Reference {
            image: image.into(),
            source,
        })?;
        let pol = moat_image::PullPolicy::from_field(policy, &r).map_err(|source| {
            ImageError::Policy {
                image: image.into(),
                source,
            }
        })?;
        let present = self.store.get(image)?;
        let rec = match (moat_image::decide(pol, present.is_some()), present) {
            (moat_image::PullDecision::UseLocal, Some(rec)) => rec,
            (moat_image::PullDecision::Pull, _) => moat_image::registry::Client::new(None)
                .pull(&self.store, &r, &mut |_, _, _| {})
                .map_err(|source| ImageError::Pull {
                    image: image.into(),
                    source: Box::new(source),
                })?,
            (_, _) => return Err(ImageError::NotPresent(image.into())),
        };
        let cfg = self.store.read_blob(&rec.config)?;
        let d = ImageDefaults::from_config_blob(&cfg)?;
        Ok((d, rec.manifest.as_str().to_string()))
    }

    fn prepare(&self, image: &str, id: &str, target: &Path) -> Result<(), ImageError> {
        Ok(self
            .store
            .prepare_rootfs(self.mounter.as_ref(), image, id, target)?)
    }

    fn release(&self, id: &str, target: &Path) -> Result<(), ImageError> {
        Ok(self
            .store
            .release_rootfs(self.mounter.as_ref(), id, target)?)
    }
}
