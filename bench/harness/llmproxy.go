package harness

import "path/filepath"

// llmproxyConfig sets least-connection balancing and turns off the
// response cache and the per-address rate limit, whose default of 10
// requests per second would throttle the load generator. Each node takes
// as many requests as the other proxies allow, so llmproxy queues none.
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
  policy: least_conn
rate_limit:
  per_address: 0
  burst: 0
cache:
  enabled: false
shutdown_timeout: 2s
upstream:
  connect: 3s
  first_byte: {{.TimeoutSec}}s
  idle: {{.TimeoutSec}}s
  total: 0
`

func startLLMProxy(e *Env, listen string, fleet *Fleet) (*Proc, error) {
	path, err := writeConfig(e, "llmproxy.yaml", llmproxyConfig, listen, fleet)
	if err != nil {
		return nil, err
	}
	if e.ProfileDir != "" {
		return e.Start(ProcSpec{
			Name: "llmproxy",
			Path: filepath.Join(e.BinDir, "llmproxyprof"),
			Args: []string{"-config", path, "-profile-dir", e.ProfileDir},
		})
	}
	return e.Start(ProcSpec{
		Name: "llmproxy",
		Path: filepath.Join(e.BinDir, "llmproxy"),
		Args: []string{"serve", "-config", path},
	})
}
