# desc: baseline without QKD: aes256gcm16-prfsha384-x25519 tunnel, ping, CHILD (PFS) and IKE rekeys
# Proves the harness itself (images, kernel-libipsec, rekey polling) independently of the plugin.
IKE_PROPOSALS=aes256gcm16-prfsha384-x25519
ESP_PROPOSALS=aes256gcm16-x25519
gateways_up
initiate gw-a
expect_tunnel_up
expect_log gw-a 'IKE_SA tunnel\[[0-9]+\] established'
expect_log gw-b 'CHILD_SA net\{[0-9]+\} established'
ping_through gw-a
ping_through gw-b

rekey_child gw-a
ping_through gw-a
rekey_ike gw-a
ping_through gw-a
# The responder can rekey too.
rekey_child gw-b
rekey_ike gw-b
ping_through gw-b
expect_charon_alive gw-a
expect_charon_alive gw-b
