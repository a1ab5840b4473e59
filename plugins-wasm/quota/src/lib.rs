//! The first-party quota policy: default and per-image container size
//! limits; writes past the hard limit are denied, past the soft one warned.
//!
//! Settings (`drivers plugin add quota.wasm --set KEY=VALUE`):
//!
//! | key            | default | meaning                                                   |
//! |----------------|---------|-----------------------------------------------------------|
//! | `default`      | none    | limit for containers of images without their own          |
//! | `image.<NAME>` | none    | limit for containers of image NAME                        |
//! | `soft_percent` | `80`    | warn when a write takes a container past this % of its limit |
//!
//! A container's hard limit is the one the backend enforces; a container
//! created without one (before this policy, or on a backend that has none)
//! is judged against the limit this policy would give it.

use drivers_policy_sdk::types::{ContainerRequest, PolicyError, Usage, Verdict, WriteRequest};
use drivers_policy_sdk::{Policy, QuotaPolicy, Settings};

/// Parsed settings.
#[derive(Debug)]
pub struct Limits {
    default: Option<u64>,
    images: Vec<(String, u64)>,
    soft_percent: u64,
}

impl Policy for Limits {
    fn init(settings: Settings) -> Result<Self, PolicyError> {
        settings.only(&["default", "image.", "soft_percent"])?;
        let mut images = Vec::new();
        for (name, _) in settings.with_prefix("image.") {
            let key = format!("image.{name}");
            let limit = settings.size(&key)?.unwrap_or(0);
            images.push((name.to_owned(), limit));
        }
        let soft_percent = settings.u64("soft_percent")?.unwrap_or(80);
        if !(1..=100).contains(&soft_percent) {
            return Err(PolicyError::InvalidConfig(format!(
                "soft_percent={soft_percent}: use 1 to 100"
            )));
        }
        let limits = Limits {
            default: settings.size("default")?,
            images,
            soft_percent,
        };
        if limits.default == Some(0) || limits.images.iter().any(|(_, l)| *l == 0) {
            return Err(PolicyError::InvalidConfig(
                "a limit of 0 bytes leaves no room for any write".into(),
            ));
        }
        Ok(limits)
    }
}

impl Limits {
    /// The limit this policy gives containers of `image`.
    fn limit_for(&self, image: &str) -> Option<u64> {
        self.images
            .iter()
            .rev()
            .find(|(n, _)| n == image)
            .map(|(_, l)| *l)
            .or(self.default)
    }
}

/// The `image:<name>` scope among `current`, if any.
fn image_of(current: &[Usage]) -> Option<&str> {
    current.iter().find_map(|u| u.scope.strip_prefix("image:"))
}

impl QuotaPolicy for Limits {
    fn container_limit(&self, req: ContainerRequest) -> Result<Option<u64>, PolicyError> {
        let limit = self.limit_for(&req.image);
        if let Some(l) = limit {
            drivers_policy_sdk::info!(
                "container {} of {} gets {l} bytes",
                req.container,
                req.image
            );
        }
        Ok(limit)
    }

    fn check_write(&self, req: WriteRequest) -> Result<Verdict, PolicyError> {
        let Some(own) = req.current.iter().find(|u| u.scope == req.scope) else {
            return Err(PolicyError::Unsupported(format!(
                "no usage given for scope {}",
                req.scope
            )));
        };
        let limit = own
            .limit_bytes
            .or_else(|| image_of(&req.current).and_then(|i| self.limit_for(i)));
        let Some(limit) = limit else {
            return Ok(Verdict::Allow);
        };
        let after = own.used_bytes.saturating_add(req.delta_bytes);
        let soft = limit / 100 * self.soft_percent + limit % 100 * self.soft_percent / 100;
        Ok(if after > limit {
            Verdict::Deny(format!(
                "{} would use {after} bytes, over its hard limit of {limit}",
                req.scope
            ))
        } else if after > soft {
            Verdict::Warn(format!(
                "{} would use {after} bytes, past the soft limit of {soft} ({}% of {limit})",
                req.scope, self.soft_percent
            ))
        } else {
            Verdict::Allow
        })
    }
}

drivers_policy_sdk::export!(Limits: quota);

#[cfg(test)]
mod tests {
    use drivers_policy_sdk::testing::{FakeStore, run_check_write, run_container_limit};

    use super::*;

    /// Per-image limits win over the default; no setting means no limit.
    #[test]
    fn container_limits() {
        let s = FakeStore::new(0);
        let set = ["default=1G", "image.web=2G"];
        let lim = |img| run_container_limit::<Limits>(&set, &s.container_request("c", img));
        assert_eq!(lim("web").unwrap(), Some(2 << 30));
        assert_eq!(lim("db").unwrap(), Some(1 << 30));
        assert_eq!(
            run_container_limit::<Limits>(&["image.web=1M"], &s.container_request("c", "db"))
                .unwrap(),
            None
        );
    }

    /// Deny past the hard limit, warn past the soft one, allow below; a
    /// container without an enforced limit is judged by its image's.
    #[test]
    fn write_verdicts() {
        let mut s = FakeStore::new(0);
        s.container("enforced", "web", 600, Some(1000));
        s.container("advisory", "db", 600, None);
        s.container("free", "other", 600, None);
        let set = ["image.db=1000", "soft_percent=70"];
        let v = |c, d| run_check_write::<Limits>(&set, &s.write_request(c, d)).unwrap();
        assert_eq!(v("enforced", 50), Verdict::Allow);
        assert!(matches!(v("enforced", 200), Verdict::Warn(_)));
        assert!(matches!(v("enforced", 401), Verdict::Deny(_)));
        assert!(matches!(v("advisory", 200), Verdict::Warn(_)));
        assert!(matches!(v("advisory", 500), Verdict::Deny(_)));
        assert_eq!(v("free", 1 << 40), Verdict::Allow);
    }

    /// Nonsense settings are refused at init.
    #[test]
    fn bad_settings() {
        let s = FakeStore::new(0).container_request("c", "i");
        for bad in ["default=0", "soft_percent=150", "image.x=big", "limit=1G"] {
            assert!(run_container_limit::<Limits>(&[bad], &s).is_err(), "{bad}");
        }
    }
}
