package config

import (
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Warnings lists legal settings of c that are risky, one sentence each,
// starting with the path of the setting. The caller logs them at load time.
// An empty list means no warning.
func (c *Config) Warnings() []string {
	var w []string
	w = append(w, c.queueWarnings()...)
	w = append(w, c.exposureWarnings()...)
	w = append(w, c.authWarnings()...)
	w = append(w, c.timeoutWarnings()...)
	w = append(w, c.redisWarnings()...)
	return w
}

func (c *Config) queueWarnings() []string {
	var w []string
	for _, name := range Classes {
		if class, ok := c.Queue.Classes[name]; ok && class.MaxLength == 0 {
			w = append(w, fmt.Sprintf("queue.classes.%s.max_length: 0 leaves the class "+
				"unbounded, so a backlog can use memory without limit", name))
		}
	}
	return w
}

// exposureWarnings flags open doors: a listener other hosts can reach
// without keys, open admin routes, any web origin, any forwarding client.
func (c *Config) exposureWarnings() []string {
	var w []string
	if !c.Auth.Required && !isLoopbackAddress(c.Listen) {
		w = append(w, fmt.Sprintf("listen: %s is reachable from other hosts and "+
			"auth.required is false, so anyone who reaches it can run models", c.Listen))
	}
	adminAddr := c.Admin.Listen
	if adminAddr == "" {
		adminAddr = c.Listen
	}
	if c.Admin.Token == "" && !isLoopbackAddress(adminAddr) {
		w = append(w, fmt.Sprintf("admin.token: empty while admin routes are served on %s, "+
			"which other hosts can reach", adminAddr))
	}
	for _, origin := range c.CORS.AllowedOrigins {
		if origin == "*" && !c.Auth.Required {
			w = append(w, "cors.allowed_origins: * with auth.required false lets any web page "+
				"a user opens send requests to the proxy")
			break
		}
	}
	for i, s := range c.RateLimit.TrustedProxies {
		if p, err := parsePrefix(s); err == nil && p.Bits() == 0 {
			w = append(w, fmt.Sprintf("rate_limit.trusted_proxies[%d]: %s trusts "+
				"X-Forwarded-For from every client, so clients can evade per-address limits",
				i, s))
		}
	}
	return w
}

func (c *Config) authWarnings() []string {
	var w []string
	switch {
	case !c.Auth.Required && len(c.Auth.Keys) > 0:
		unlimited := "requests without a key, or with an unknown one,"
		if c.Auth.UnknownKeys == UnknownKeysReject {
			unlimited = "requests without a key"
		}
		w = append(w, fmt.Sprintf("auth.required: false while %d keys are configured, so "+
			"%s bypass every key's limits and quotas", len(c.Auth.Keys), unlimited))
	case c.Auth.Required && len(c.Auth.Keys) == 0:
		w = append(w, "auth.required: true with no auth.keys, so every request is "+
			"rejected with 401")
	}
	return w
}

func (c *Config) timeoutWarnings() []string {
	var w []string
	if c.Health.Timeout >= c.Health.Interval {
		w = append(w, fmt.Sprintf("health.timeout: %v is not below health.interval (%v), "+
			"so a probe may still run when the next one is due",
			c.Health.Timeout, c.Health.Interval))
	}
	subSecond := []struct {
		path   string
		value  time.Duration
		effect string
	}{
		{"read_timeout", c.ReadTimeout, "a client that takes longer to send its request is cut off"},
		{"write_timeout", c.WriteTimeout, "a client that takes longer to read a response is cut off"},
		{"upstream.connect", c.Upstream.Connect, "a node that takes longer to accept a connection counts as down"},
		{"upstream.first_byte", c.Upstream.FirstByte, "a node that takes longer to load a model or start an answer fails the request"},
		{"upstream.idle", c.Upstream.Idle, "a stream that pauses longer between chunks is cut"},
	}
	for _, setting := range subSecond {
		if setting.value > 0 && setting.value < time.Second {
			w = append(w, fmt.Sprintf("%s: %v is under a second, so %s",
				setting.path, setting.value, setting.effect))
		}
	}
	if c.Upstream.Total > 0 && c.Upstream.Total < c.Upstream.FirstByte {
		w = append(w, fmt.Sprintf("upstream.total: %v is below upstream.first_byte (%v), "+
			"so a request that waits for a cold model load can time out",
			c.Upstream.Total, c.Upstream.FirstByte))
	}
	return w
}

func (c *Config) redisWarnings() []string {
	if c.Redis.Addr != "" {
		return nil
	}
	var w []string
	if c.Redis.Password != "" {
		w = append(w, "redis.password: set while redis.addr is empty, so it is unused")
	}
	for i, k := range c.Auth.Keys {
		if k.MonthlyTokens > 0 || k.MonthlyRequests > 0 {
			w = append(w, fmt.Sprintf("auth.keys[%d]: monthly quotas without redis.addr "+
				"are counted by each instance on its own, so several instances allow "+
				"several times the quota", i))
		}
	}
	return w
}

// isLoopbackAddress reports whether a host:port can be reached only from
// this machine: a loopback IP or "localhost". An empty host listens on
// every interface, and other names are assumed reachable.
func isLoopbackAddress(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
