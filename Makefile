# make install: build the plugin and install it like a Debian strongSwan plugin.
PLUGINDIR ?= /usr/lib/ipsec/plugins
CONFDIR   ?= /etc/strongswan.d/charon

.PHONY: build install uninstall test deb

build:
	cargo build --release -p strongswan-qkd

install: build
	install -D -s -m 0644 target/release/libstrongswan_qkd.so $(DESTDIR)$(PLUGINDIR)/libstrongswan-qkd.so
	test -e $(DESTDIR)$(CONFDIR)/qkd.conf || \
		install -D -m 0644 strongswan-conf/strongswan.d/charon/qkd.conf $(DESTDIR)$(CONFDIR)/qkd.conf

uninstall:
	rm -f $(DESTDIR)$(PLUGINDIR)/libstrongswan-qkd.so

test:
	./tests/run-all.sh

# Debian packages strongswan-qkd and qkd-kme-sim in target/debian/ (see packaging/).
deb:
	./scripts/build-debs.sh
