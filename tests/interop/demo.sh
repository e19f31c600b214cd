# desc: demo: tunnel up (hybrid x25519 + QKD when the plugin and simulator are built), SAs, ping
if have_plugin && have_kme_sim; then
    . "$QKD_INTEROP_DIR/lib/qkd.sh"
    # The README's layout: qkd in IKE_INTERMEDIATE, and as the CHILD rekeys' own key
    # exchange (with its in-method x25519), where a dry KME costs no SA.
    use_recommended_proposals
    kme_up
else
    note "QKD plugin or simulator not built: demo with plain x25519"
fi
gateways_up
initiate gw-a
echo; echo "  \$ docker exec gw-a swanctl --list-sas"
list_sas gw-a | sed 's/^/  /'
echo; echo "  \$ docker exec gw-a ping -c 3 -I 198.51.100.1 203.0.113.1"
in_node gw-a ping -n -c 3 -I 198.51.100.1 203.0.113.1 | sed 's/^/  /'
ping_through gw-a
if have_plugin && have_kme_sim; then
    # The first CHILD SA is keyed in IKE_AUTH without a KE; a PFS rekey fetches its own QKD key.
    rekey_child gw-a
    echo; echo "  \$ docker exec gw-a swanctl --list-sas   (after a PFS CHILD rekey)"
    list_sas gw-a | grep -E 'QKD' | sed 's/^/  /'
    echo; echo "  QKD keys the gateways used (charon logs):"
    for gw in gw-a gw-b; do
        { log_grep "$gw" 'qkd: .*key IDs' || true; } | sed -E "s/^/  $gw: /"
    done
    echo; echo "  \$ docker exec gw-a qkdctl status"
    in_node gw-a qkdctl status | sed 's/^/  /'
fi
