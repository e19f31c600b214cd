# desc: the KME simulator container starts and answers `qkd-kme-sim admin stats` via docker exec
require_kme_sim
kme_up
stats=$(kme_admin stats) || fail "admin stats failed"
note "stats: $(tr -d '\n' <<<"$stats" | cut -c1-200)"
grep -q '{' <<<"$stats" || fail "admin stats did not print JSON: $stats"
kme_admin pause >/dev/null || fail "admin pause failed"
kme_admin resume >/dev/null || fail "admin resume failed"
step "admin stats/pause/resume answered"
