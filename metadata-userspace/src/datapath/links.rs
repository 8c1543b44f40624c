//! TCX links: created and pinned, given a new program, and removed. A link
//! belongs to its file descriptor; pinned on the bpffs it outlives the
//! daemon, so the programs stay attached (and metadata fails closed) while
//! no daemon runs.
//!
//! Links are created one at a time, through aya. Creating the first TCX
//! link on a device waits for an RCU grace period while holding RTNL (about
//! 9.5 ms here), so concurrent creation does not help: measured with 16
//! threads issuing BPF_LINK_CREATE, 300 taps took 2.85 s, the same
//! 9.5 ms per tap as one at a time, and 10.8 ms in all with
//! /sys/kernel/rcu_expedited=1 (a host-wide setting the daemon leaves to
//! the operator).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
};
use log::warn;
use metadata_common::{Ifindex, pins};

use super::DatapathError;

/// The pin of `tap`'s link under the links folder `dir`.
pub fn tap_pin(dir: &Path, tap: Ifindex) -> PathBuf {
    dir.join(pins::tap_link(tap))
}

/// The taps with a link pinned in `dir`.
pub fn pinned_taps(dir: &Path) -> Result<BTreeSet<Ifindex>, DatapathError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DatapathError::Io {
        what: format!("listing {}", dir.display()),
        source,
    })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(pins::tap_of_link))
        .collect())
}

/// Attaches `program` to `device` through a TCX link pinned at `pin`. If a
/// previous daemon left a link there, the program in it is replaced
/// atomically instead, so the device never runs without a program.
pub fn attach_or_adopt(
    program: &mut SchedClassifier,
    name: &'static str,
    device: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<PinnedLink, DatapathError> {
    let attach_err = |source| DatapathError::Attach {
        program: name,
        device: device.to_owned(),
        source,
    };
    let link_id = match adopt(program, pin)? {
        Some(id) => id,
        None => program
            .attach_with_options(
                device,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?,
    };
    let owned = program.take_link(link_id).map_err(attach_err)?;
    let fd_link: FdLink = owned.try_into().map_err(|source| DatapathError::Link {
        path: pin.to_owned(),
        source,
    })?;
    fd_link.pin(pin).map_err(|source| DatapathError::Pin {
        path: pin.to_owned(),
        source,
    })
}

/// Gives the link pinned at `pin` (if any) `program`; `None` when there is
/// no usable link there and one must be created.
fn adopt(
    program: &mut SchedClassifier,
    pin: &Path,
) -> Result<Option<aya::programs::tc::SchedClassifierLinkId>, DatapathError> {
    if !pin.exists() {
        return Ok(None);
    }
    let old = PinnedLink::from_pin(pin).map_err(|source| DatapathError::Link {
        path: pin.to_owned(),
        source,
    })?;
    let old = old.unpin().map_err(|source| DatapathError::Io {
        what: format!("unpinning {}", pin.display()),
        source,
    })?;
    match SchedClassifierLink::try_from(old) {
        Ok(old) => match program.attach_to_link(old) {
            Ok(id) => Ok(Some(id)),
            // A link whose device is gone cannot be updated; attach anew.
            Err(err) => {
                warn!(
                    "replacing the program in {}: {err}; attaching anew",
                    pin.display()
                );
                Ok(None)
            }
        },
        Err(err) => {
            warn!(
                "{} is not a TCX link ({err}); attaching anew",
                pin.display()
            );
            Ok(None)
        }
    }
}

/// Removes the link pinned at `pin`, which detaches its program; a pin
/// that is not a link is removed as a file.
pub fn detach(pin: &Path) -> Result<(), DatapathError> {
    let io_err = |source| DatapathError::Io {
        what: format!("removing {}", pin.display()),
        source,
    };
    match PinnedLink::from_pin(pin) {
        Ok(link) => link.unpin().map(drop).map_err(io_err),
        Err(_) if !pin.exists() => Ok(()),
        Err(_) => std::fs::remove_file(pin).map_err(io_err),
    }
}
