//! Storage admission and accounting: whom a stored fragment is charged to, the
//! per-owner quota, and when a fragment of an upload that was never certified is
//! garbage. Pure decisions (no store, no clock: `now` is an argument); [`crate::Holder`]
//! applies them to the store, and the daemon's collection pass looks certificates up
//! and feeds the answers in.
//!
//! Owns: [`upload_charge`], [`repair_charge`], [`merge_charge`], [`check_quota`],
//! [`collection_due`], [`CertificateSearch`], [`UploadVerdict`],
//! [`uncertified_verdict`], and the grace constant [`DEFAULT_UNCERTIFIED_GRACE`].
//!
//! May use: [`cairn_core::crypto`] (grant and certificate bodies), [`cairn_store`]'s
//! [`Charge`], the crate root's [`Refusal`].
//!
//! # Why uploads must be certified
//! A fragment is stored under an upload grant, which anyone can sign for a file id of
//! their own key; the file certificate arrives at the end of the put. An upload whose
//! certificate never comes (a stranger storing junk under self-signed grants, or a put
//! that failed) would otherwise keep its bytes forever. So each fragment is charged
//! with its grant's expiry, and once the grant has expired and a grace period
//! ([`DEFAULT_UNCERTIFIED_GRACE`]) has passed, the node looks for the file's
//! certificate at its keepers: found, the charge is marked certified for good; not
//! held by a majority of the keepers that answered cleanly, the charge is collected,
//! and a fragment with no charge left is deleted. Any doubt (keepers unreachable, too
//! few answers, a keeper serving something that does not verify) keeps the fragment.

use cairn_core::crypto::{FileCertificate, UploadGrant};
use cairn_core::id::OwnerKey;
use cairn_store::Charge;

use crate::{Refusal, UnixSeconds};

/// How long after its grant expires a fragment of an upload with no certificate is
/// kept, by default (`PastConfig::uncertified_grace`). A put publishes its certificate
/// at its end, which may come after the grant ran out (the grant bounds when fragments
/// may be stored, not when the put finishes), and certificate replication reaches
/// keepers that were away on its slow pass; a day covers both with a wide margin, and
/// costs at most a day's worth of junk per grant (a grant lives at most
/// `PastConfig::max_grant_lifetime`, a week).
pub const DEFAULT_UNCERTIFIED_GRACE: u64 = 24 * 3600;

/// The charge of a fragment of `len` bytes stored under `grant`: to the grant's
/// owner, uncertified until the grant expires.
pub fn upload_charge(grant: &UploadGrant, len: u64) -> Charge {
    Charge {
        owner: grant.owner.owner_key(),
        file: grant.file_id,
        len,
        uncertified_until: Some(grant.expires_at),
    }
}

/// The charge of a fragment of `len` bytes stored by repair under `certificate`: to
/// the certificate's owner, certified from the start.
pub fn repair_charge(certificate: &FileCertificate, len: u64) -> Charge {
    Charge {
        owner: certificate.owner.owner_key(),
        file: certificate.file_id,
        len,
        uncertified_until: None,
    }
}

/// The charge to keep when an owner stores a fragment it is already charged for (a
/// retried put, or the same block in two of its files): a certified charge stays
/// certified; otherwise the later deadline wins, so a second upload's fresh grant is
/// not cut short by an earlier one's.
pub fn merge_charge(held: Option<Charge>, offered: Charge) -> Charge {
    match held {
        Some(held) if held.uncertified_until.is_none() => Charge {
            len: offered.len,
            ..held
        },
        Some(held)
            if offered.uncertified_until.is_some()
                && held.uncertified_until > offered.uncertified_until =>
        {
            Charge {
                len: offered.len,
                ..held
            }
        }
        _ => offered,
    }
}

/// Refuses with [`Refusal::OverQuota`] when `owner`, with `used` bytes charged here,
/// may not store `size` more under `quota` (`None`: no quota).
pub fn check_quota(
    owner: OwnerKey,
    used: u64,
    size: u64,
    quota: Option<u64>,
) -> Result<(), Refusal> {
    match quota {
        Some(quota) if used.saturating_add(size) > quota => Err(Refusal::OverQuota {
            owner,
            used,
            size,
            quota,
        }),
        _ => Ok(()),
    }
}

/// Whether a charge's upload should be checked for a certificate at `now`: it is
/// still uncertified, and its grant expired more than `grace` seconds ago.
pub fn collection_due(charge: &Charge, now: UnixSeconds, grace: u64) -> bool {
    charge
        .uncertified_until
        .is_some_and(|until| now >= until.saturating_add(grace))
}

/// What a search of a file's certificate keepers found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateSearch {
    /// A valid certificate of the file, by the owner charged.
    Certified,
    /// No keeper that answered holds a valid certificate.
    NoneHeld {
        /// Keepers that answered.
        answered: usize,
        /// Of those, keepers that served something that does not verify.
        forged: usize,
    },
    /// The keepers could not be located or none answered.
    Unreached,
}

/// What to do with one charge whose collection is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadVerdict {
    /// Keep it as it is and look again on a later pass.
    Keep,
    /// The upload was certified: mark the charge certified (never looked at again).
    Certified,
    /// The upload was never certified: remove the charge, and the fragment with it
    /// once no charge is left.
    Collect,
}

/// Decides about a charge at `now`, given what the certificate search found. Nothing
/// is collected before [`collection_due`], nor unless a majority of the
/// `certificate_replicas` keepers answered, none of them with a record that does not
/// verify (a keeper serving junk could be hiding a real certificate from us, so doubt
/// keeps the bytes).
pub fn uncertified_verdict(
    charge: &Charge,
    now: UnixSeconds,
    grace: u64,
    search: CertificateSearch,
    certificate_replicas: usize,
) -> UploadVerdict {
    if charge.uncertified_until.is_none() {
        return UploadVerdict::Keep;
    }
    match search {
        CertificateSearch::Certified => UploadVerdict::Certified,
        _ if !collection_due(charge, now, grace) => UploadVerdict::Keep,
        CertificateSearch::NoneHeld { answered, forged }
            if forged == 0 && answered > certificate_replicas / 2 =>
        {
            UploadVerdict::Collect
        }
        CertificateSearch::NoneHeld { .. } | CertificateSearch::Unreached => UploadVerdict::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::id::{FileId, Id};

    fn charge(until: Option<u64>) -> Charge {
        Charge {
            owner: OwnerKey(Id([1; 32])),
            file: FileId(Id([2; 32])),
            len: 100,
            uncertified_until: until,
        }
    }

    const GRACE: u64 = 3600;
    const NONE_HELD: CertificateSearch = CertificateSearch::NoneHeld {
        answered: 4,
        forged: 0,
    };

    #[test]
    fn an_uncertified_upload_is_collected_only_after_its_grant_and_the_grace() {
        let pending = charge(Some(1000));
        assert!(!collection_due(&pending, 1000 + GRACE - 1, GRACE));
        assert!(collection_due(&pending, 1000 + GRACE, GRACE));
        assert_eq!(
            uncertified_verdict(&pending, 1000 + GRACE - 1, GRACE, NONE_HELD, 4),
            UploadVerdict::Keep
        );
        assert_eq!(
            uncertified_verdict(&pending, 1000 + GRACE, GRACE, NONE_HELD, 4),
            UploadVerdict::Collect
        );
        // A grant that expires at the end of time is never due.
        assert!(!collection_due(
            &charge(Some(u64::MAX)),
            u64::MAX - 1,
            GRACE
        ));
    }

    #[test]
    fn a_certified_upload_is_never_collected() {
        let late = 1000 + GRACE + 1;
        assert_eq!(
            uncertified_verdict(
                &charge(Some(1000)),
                late,
                GRACE,
                CertificateSearch::Certified,
                4
            ),
            UploadVerdict::Certified
        );
        assert!(!collection_due(&charge(None), u64::MAX, GRACE));
        assert_eq!(
            uncertified_verdict(&charge(None), late, GRACE, NONE_HELD, 4),
            UploadVerdict::Keep
        );
    }

    #[test]
    fn doubt_keeps_the_fragment() {
        let (pending, late) = (charge(Some(1000)), 1000 + GRACE);
        let cases = [
            CertificateSearch::Unreached,
            // Only 2 of 4 keepers answered: not a majority.
            CertificateSearch::NoneHeld {
                answered: 2,
                forged: 0,
            },
            // A keeper served a record that does not verify.
            CertificateSearch::NoneHeld {
                answered: 4,
                forged: 1,
            },
        ];
        for search in cases {
            assert_eq!(
                uncertified_verdict(&pending, late, GRACE, search, 4),
                UploadVerdict::Keep,
                "{search:?}"
            );
        }
        assert_eq!(
            uncertified_verdict(
                &pending,
                late,
                GRACE,
                CertificateSearch::NoneHeld {
                    answered: 3,
                    forged: 0
                },
                4
            ),
            UploadVerdict::Collect,
            "3 of 4 is a majority"
        );
    }

    #[test]
    fn merging_keeps_certified_and_the_later_deadline() {
        let certified = charge(None);
        assert_eq!(merge_charge(Some(certified), charge(Some(5))), certified);
        assert_eq!(
            merge_charge(Some(charge(Some(5))), charge(Some(9))),
            charge(Some(9))
        );
        assert_eq!(
            merge_charge(Some(charge(Some(9))), charge(Some(5))),
            charge(Some(9))
        );
        assert_eq!(merge_charge(Some(charge(Some(9))), certified), certified);
        assert_eq!(merge_charge(None, charge(Some(5))), charge(Some(5)));
    }

    #[test]
    fn the_quota_refuses_what_would_pass_it() {
        let owner = OwnerKey(Id([1; 32]));
        assert_eq!(check_quota(owner, 900, 100, Some(1000)), Ok(()));
        assert_eq!(
            check_quota(owner, 901, 100, Some(1000)),
            Err(Refusal::OverQuota {
                owner,
                used: 901,
                size: 100,
                quota: 1000
            })
        );
        assert_eq!(check_quota(owner, u64::MAX, u64::MAX, None), Ok(()));
        assert!(check_quota(owner, u64::MAX, 1, Some(u64::MAX - 1)).is_err());
    }
}
