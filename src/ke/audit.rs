//! The audit line: one INFO line per key exchange, `key=value`, for operators to grep and
//! log shippers to parse. It names the IKE SA, the roles, the key IDs and the KME, never key
//! material. Values never contain spaces (names and SAE IDs cannot, causes are tokens).
//!
//! `qkd-audit: ike_sa=gw-b[3] exchange=rekey role=initiator peer_sae=sae-b
//! key_ids=<id>,<id> kme=https://kme-a:8443 result=qkd`

use super::{ExchangeContext, KeError};
use crate::ids::{format_ids, KeyId, SaeId};

/// What one exchange has learnt so far for its audit line.
#[derive(Default)]
pub(super) struct Audit {
    pub peer_sae: Option<SaeId>,
    pub kme: Option<String>,
    pub key_ids: Vec<KeyId>,
    /// This initiator sent a "no key" request.
    pub sent_no_key: bool,
    done: bool,
}

impl Audit {
    /// Logs the line once; later outcomes of the same exchange are not news.
    pub fn emit(&mut self, ctx: &ExchangeContext, initiator: bool, result: &str) {
        self.emit_with(ctx, initiator, result, |line| log::info!("{line}"));
    }

    /// [`Self::emit`] through `log` (a rate limiter for unauthenticated peers).
    pub fn emit_with(
        &mut self,
        ctx: &ExchangeContext,
        initiator: bool,
        result: &str,
        log: impl FnOnce(&str),
    ) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        log(&self.line(ctx, initiator, result));
    }

    /// The exchange object goes away without an outcome: the peer refused our request (or
    /// never answered), so charon never passed us a response.
    pub fn emit_unfinished(&mut self, ctx: &ExchangeContext, initiator: bool) {
        let result = if self.sent_no_key {
            "no-key-sent"
        } else {
            "incomplete"
        };
        self.emit(ctx, initiator, result);
    }

    fn line(&self, ctx: &ExchangeContext, initiator: bool, result: &str) -> String {
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "qkd-audit: ike_sa={}[{}] exchange={} role={} peer_sae={} key_ids={} kme={} result={result}",
            ctx.connection.as_deref().unwrap_or("(unnamed)"),
            dash(ctx.unique_id.map(|id| id.to_string())),
            if ctx.established { "rekey" } else { "initial" },
            if initiator { "initiator" } else { "responder" },
            dash(self.peer_sae.as_ref().map(SaeId::to_string)),
            dash((!self.key_ids.is_empty()).then(|| format_ids(&self.key_ids))),
            dash(self.kme.clone()),
        )
    }
}

/// `result=` of a failed exchange: `refused-no-key`, or `failed:<cause>`.
pub(super) fn failure_result(error: &KeError) -> String {
    let cause = match error {
        KeError::PeerHasNoKey(_) => return "refused-no-key".into(),
        KeError::UnknownPeer(_) => "unknown-peer",
        KeError::Kme { error, .. } => error.audit_cause(),
        KeError::Busy(_) => "kme-requests-limit",
        KeError::BadPeerData(_) | KeError::Wire(_) => "peer-data",
        KeError::KeyMismatch { .. } => "key-mismatch",
        KeError::NoFallback(_) => "no-fallback",
        KeError::Encode(_) => "encode",
        KeError::InnerKe(_) => "in-method-ke",
        KeError::AlreadyFailed => "already-failed",
        KeError::PeerRefused { .. } => "peer-refused",
        KeError::OutOfOrder(_) => "call-order",
    };
    format!("failed:{cause}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kme::KmeError;

    #[test]
    fn the_line_is_key_value_without_spaces_in_values() {
        let mut audit = Audit {
            peer_sae: Some(SaeId::new("sae-b").unwrap()),
            kme: Some("https://kme-a.test:8443".into()),
            key_ids: vec![KeyId([1; 16]), KeyId([2; 16])],
            ..Default::default()
        };
        let ctx = ExchangeContext {
            connection: Some("gw-b".into()),
            established: true,
            unique_id: Some(7),
            ..Default::default()
        };
        let line = audit.line(&ctx, true, "qkd");
        assert_eq!(
            line,
            format!(
                "qkd-audit: ike_sa=gw-b[7] exchange=rekey role=initiator peer_sae=sae-b key_ids={},{} \
                 kme=https://kme-a.test:8443 result=qkd",
                KeyId([1; 16]),
                KeyId([2; 16])
            )
        );
        let fields: Vec<&str> = line.trim_start_matches("qkd-audit: ").split(' ').collect();
        assert!(fields.iter().all(|f| f.split_once('=').is_some()), "{line}");

        audit = Audit::default();
        let line = audit.line(&ExchangeContext::default(), false, "failed:peer-data");
        assert_eq!(
            line,
            "qkd-audit: ike_sa=(unnamed)[-] exchange=initial role=responder peer_sae=- key_ids=- \
             kme=- result=failed:peer-data"
        );
    }

    #[test]
    fn failures_name_their_cause_and_a_dry_peer_is_a_refusal() {
        let kme = KeError::Kme {
            peer: SaeId::new("sae-b").unwrap(),
            error: KmeError::NoKeyAvailable {
                url: "u".into(),
                message: "m".into(),
            },
        };
        assert_eq!(failure_result(&kme), "failed:kme-no-key");
        assert_eq!(
            failure_result(&KeError::PeerHasNoKey("x".into())),
            "refused-no-key"
        );
        assert_eq!(
            failure_result(&KeError::KeyMismatch {
                key_ids: "i".into()
            }),
            "failed:key-mismatch"
        );
    }

    #[test]
    fn one_line_per_exchange() {
        let mut audit = Audit::default();
        let ctx = ExchangeContext::default();
        audit.emit(&ctx, true, "qkd");
        assert!(audit.done);
        // Dropping a completed exchange adds nothing.
        audit.emit_unfinished(&ctx, true);
        assert!(audit.done);
    }
}
