package ratelimit

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// trustedProxies is rate_limit.trusted_proxies, parsed.
type trustedProxies []netip.Prefix

// parseTrustedProxies accepts CIDRs and single addresses.
func parseTrustedProxies(entries []string) (trustedProxies, error) {
	tp := make(trustedProxies, 0, len(entries))
	for i, e := range entries {
		e = strings.TrimSpace(e)
		if !strings.Contains(e, "/") {
			a, err := netip.ParseAddr(e)
			if err != nil {
				return nil, fmt.Errorf("rate_limit.trusted_proxies[%d] %q: invalid address: %w",
					i, e, err)
			}
			a = a.Unmap()
			tp = append(tp, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("rate_limit.trusted_proxies[%d] %q: invalid CIDR: %w", i, e, err)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		tp = append(tp, p.Masked())
	}
	return tp, nil
}

func (tp trustedProxies) contains(a netip.Addr) bool {
	for _, p := range tp {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr implements Limiter.ClientAddr.
func (tp trustedProxies) clientAddr(peer net.IP, xForwardedFor []byte) string {
	client, ok := netip.AddrFromSlice(peer)
	if !ok {
		return ""
	}
	client = client.Unmap()
	if !tp.contains(client) {
		return client.String()
	}
	// Each proxy appends the address it received the request from, so the
	// list is read from the right. The first hop outside the trusted proxies
	// is the client; everything left of it is whatever the client sent.
	rest := xForwardedFor
	for len(rest) > 0 {
		var hop []byte
		if i := bytes.LastIndexByte(rest, ','); i >= 0 {
			hop, rest = rest[i+1:], rest[:i]
		} else {
			hop, rest = rest, nil
		}
		a, ok := parseHop(bytes.TrimSpace(hop))
		if !ok {
			// A trusted proxy wrote something that is not an address, such as
			// "unknown", so the nearest valid hop is the best estimate.
			break
		}
		client = a
		if !tp.contains(a) {
			break
		}
	}
	return client.String()
}

// parseHop parses one X-Forwarded-For entry: an address, or an address with
// a port as some proxies write it.
func parseHop(hop []byte) (netip.Addr, bool) {
	s := string(hop)
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	return a.WithZone("").Unmap(), true
}
