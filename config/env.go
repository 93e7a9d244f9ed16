package config

import "strings"

// Environment variables that override the file, or configure the whole
// proxy when there is no file. An empty variable counts as unset.
const (
	// EnvListen overrides listen.
	EnvListen = "LLMPROXY_LISTEN"
	// EnvNodes replaces the whole node list with comma-separated URLs,
	// each node taking the default limits and a name from its URL.
	EnvNodes = "LLMPROXY_NODES"
	// EnvRedisAddr overrides redis.addr.
	EnvRedisAddr = "LLMPROXY_REDIS_ADDR"
	// EnvRedisPassword overrides redis.password, so that the password
	// need not be written in the file.
	EnvRedisPassword = "LLMPROXY_REDIS_PASSWORD"
	// EnvAdminToken overrides admin.token.
	EnvAdminToken = "LLMPROXY_ADMIN_TOKEN"
	// EnvLogLevel overrides log.level.
	EnvLogLevel = "LLMPROXY_LOG_LEVEL"
)

// envOverride is one variable and the setting it overrides.
type envOverride struct {
	name string
	path string
	set  func(c *Config, value string)
}

var envOverrides = []envOverride{
	{EnvListen, "listen", func(c *Config, s string) { c.Listen = s }},
	{EnvNodes, "nodes", func(c *Config, s string) { c.Nodes = parseNodeList(s) }},
	{EnvRedisAddr, "redis.addr", func(c *Config, s string) { c.Redis.Addr = s }},
	{EnvRedisPassword, "redis.password", func(c *Config, s string) { c.Redis.Password = s }},
	{EnvAdminToken, "admin.token", func(c *Config, s string) { c.Admin.Token = s }},
	{EnvLogLevel, "log.level", func(c *Config, s string) { c.Log.Level = s }},
}

// applyEnv sets each overridden setting of c and records the variable as
// its origin, forgetting the file lines of the value it replaces.
func (l *loader) applyEnv(c *Config) {
	for _, o := range envOverrides {
		value := l.getenv(o.name)
		if value == "" {
			continue
		}
		o.set(c, value)
		l.envs[o.path] = o.name
		for p := range l.lines {
			if isUnder(p, o.path) {
				delete(l.lines, p)
			}
		}
	}
}

// parseNodeList parses the value of LLMPROXY_NODES. Spaces around each URL
// and empty entries, such as after a trailing comma, are ignored.
func parseNodeList(s string) []Node {
	var nodes []Node
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			nodes = append(nodes, DefaultNode(u))
		}
	}
	return nodes
}

// isUnder reports whether path is base or a path inside it.
func isUnder(path, base string) bool {
	if !strings.HasPrefix(path, base) {
		return false
	}
	rest := path[len(base):]
	return rest == "" || rest[0] == '.' || rest[0] == '['
}
