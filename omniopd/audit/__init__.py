"""The OmniOPD signal: forks (where to audit), teacher prefixes, similarity phi, Dirichlet target π̂."""

from omniopd.audit.forks import num_chunks_at, pick_anchors, random_anchors, sample_seeds, select_anchors
from omniopd.audit.requests import Fork, build_forks
from omniopd.audit.similarity import exact_agreement, exact_tokens, get_similarity, trim_to
from omniopd.audit.step import fork_requests, pick_forks, stable_seed
from omniopd.audit.target import AuditResult, acceptance_target, score_forks

__all__ = ["AuditResult", "Fork", "acceptance_target", "build_forks", "exact_agreement", "exact_tokens",
           "fork_requests", "get_similarity", "num_chunks_at", "pick_anchors", "pick_forks", "random_anchors",
           "sample_seeds", "score_forks", "select_anchors", "stable_seed", "trim_to"]
