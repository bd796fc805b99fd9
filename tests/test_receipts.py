"""The receipt's verdict reports the measured evidence and never a blanket "forgotten"."""

from __future__ import annotations

from forsaken.common.receipts import CANNOT_SHOW, verdict

BASE = {
    "node_id": "n1",
    "method": "forsaken",
    "samples": "all",
    "unlearning_rounds": 3,
    "recovery_rounds": 1,
}


def test_a_clean_looking_receipt_says_what_it_cannot_show() -> None:
    receipt = BASE | {"evidence": {"mia_auc": 0.52, "conf_auc": 0.49, "auc_resolution": 0.05}}
    text = verdict(receipt)
    assert "Node n1 asked to forget all the data" in text
    assert "by forsaken in 3 unlearning and 1 recovery rounds" in text
    assert "cannot tell the forgotten samples from unseen ones" in text
    assert CANNOT_SHOW in text
    assert "forgotten." not in text.replace("the forgotten samples", "")


def test_a_visible_membership_signal_is_reported_as_such() -> None:
    receipt = BASE | {"evidence": {"mia_auc": 0.57, "conf_auc": 0.51, "auc_resolution": 0.04}}
    text = verdict(receipt)
    assert "still tell the forgotten samples from unseen ones" in text
    assert "loss AUC 0.570" in text and "cannot tell" not in text


def test_the_paired_confidence_test_is_read_with_its_interval() -> None:
    evidence = {"mia_auc": 0.5, "conf_auc": 0.5, "auc_resolution": 0.05}
    fell = verdict(
        BASE
        | {
            "evidence": evidence
            | {"excess_confidence_drop": 0.8, "excess_confidence_drop_ci95": 0.2}
        }
    )
    assert "fell by 0.800 more than unseen samples'" in fell
    flat = verdict(
        BASE
        | {
            "evidence": evidence
            | {"excess_confidence_drop": 0.1, "excess_confidence_drop_ci95": 0.3}
        }
    )
    assert "no more than unseen samples' did" in flat


def test_a_server_verified_receipt_quotes_what_the_server_did() -> None:
    receipt = BASE | {
        "method": "retrain",
        "samples": 12,
        "verified_by": "server",
        "reference": "exact: the model was rolled back",
        "evidence": {"validation_acc": 0.91},
    }
    text = verdict(receipt)
    assert "forget 12 samples" in text and "exact: the model was rolled back" in text
    assert "0.910" in text and CANNOT_SHOW not in text


def test_missing_or_odd_evidence_does_not_break_the_verdict() -> None:
    assert "No membership attack was measured" in verdict(BASE | {"evidence": {}})
    assert "No membership attack" in verdict({"evidence": {"mia_auc": "x"}})
    assert "No membership attack" in verdict({"evidence": {"mia_auc": float("nan")}})


def test_looking_less_like_a_member_than_unseen_data_is_said_as_such() -> None:
    receipt = BASE | {"evidence": {"mia_auc": 0.42, "conf_auc": 0.49, "auc_resolution": 0.04}}
    text = verdict(receipt)
    assert "look less like members than unseen data does" in text
    assert "loss attack below 0.5" in text and "still tell" not in text
