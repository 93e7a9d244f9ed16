package harness

import (
	"path/filepath"
	"strings"
)

// llmproxyConfig sets least-connection balancing unless Options name
// another policy, and turns off the per-address rate limit, whose default
// of 10 requests per second would throttle the load generator. The
// response cache is off unless Options turn it on. Each node takes as
// many requests as the other proxies allow, so llmproxy queues none,
// unless Options lower MaxConnsPerNode.
const llmproxyConfig = `listen: {{.Listen}}
nodes:
{{- range .Nodes}}
  - name: {{.Name}}
    url: {{.URL}}
    max_concurrent: {{$.MaxConnsPerNode}}
{{- end}}
log:
  level: warn
balancer:
  policy: {{.Policy}}
rate_limit:
  per_address: 0
  burst: 0
cache:
  enabled: {{.Cache}}
{{- if .RedisAddr}}
redis:
  addr: {{.RedisAddr}}
{{- end}}
shutdown_timeout: 2s
{{- with .Failover}}
health:
  interval: {{ms .HealthInterval}}ms
  timeout: {{ms .HealthTimeout}}ms
retry:
  attempts: {{.Attempts}}
upstream:
  connect: {{ms .Connect}}ms
  first_byte: {{ms .FirstByte}}ms
  idle: {{$.TimeoutSec}}s
  total: 0
{{- else}}
upstream:
  connect: 3s
  first_byte: {{.TimeoutSec}}s
  idle: {{.TimeoutSec}}s
  total: 0
{{- end}}
`

func startLLMProxy(e *Env, listen string, fleet *Fleet, opts Options) (*Proc, error) {
	path, err := writeConfig(e, ".yaml", llmproxyConfig, listen, fleet, opts)
	if err != nil {
		return nil, err
	}
	if e.ProfileDir != "" {
		return e.Start(ProcSpec{
			Name: opts.Name,
			Path: filepath.Join(e.BinDir, "llmproxyprof"),
			Args: []string{"-config", path, "-profile-dir", e.ProfileDir},
		})
	}
	return e.Start(ProcSpec{
		Name: opts.Name,
		Path: filepath.Join(e.BinDir, "llmproxy"),
		Args: []string{"serve", "-config", path},
	})
}

// startFastHTTP starts bench/cmd/fasthttpproxy in front of every node of
// fleet. It takes no options but the process name.
func startFastHTTP(e *Env, listen string, fleet *Fleet, opts Options) (*Proc, error) {
	addrs := make([]string, len(fleet.Nodes))
	for i, n := range fleet.Nodes {
		addrs[i] = n.Addr
	}
	return e.Start(ProcSpec{
		Name: opts.Name,
		Path: filepath.Join(e.BinDir, "fasthttpproxy"),
		Args: []string{"-listen", listen, "-nodes", strings.Join(addrs, ",")},
	})
}
