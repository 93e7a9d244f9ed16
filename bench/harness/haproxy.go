package harness

// haproxyConfig balances by least connections and keeps connections to the
// nodes open and shared between requests (http-reuse safe, the default
// keep-alive mode rather than http-server-close). option http-no-delay
// sends each chunk at once: without it HAProxy lets the kernel hold small
// writes to merge them, which delays streamed tokens by up to about 200 ms.
// With Options.Failover HAProxy checks each node with GET /api/version
// and retries a failed request on another node (option redispatch 1
// redispatches on every retry, where the default waits for the last).
const haproxyConfig = `global
    maxconn 8000

defaults
    mode http
    option http-no-delay
    timeout client {{.TimeoutSec}}s
{{- with .Failover}}
    timeout connect {{ms .Connect}}ms
    timeout server {{ms .FirstByte}}ms
    timeout check {{ms .HealthTimeout}}ms
{{- else}}
    timeout connect 3s
    timeout server {{.TimeoutSec}}s
{{- end}}
    timeout http-keep-alive 60s
    timeout http-request 10s

frontend bench
    bind {{.Listen}}
    maxconn 8000
    default_backend nodes

backend nodes
    balance leastconn
    http-reuse safe
{{- with .Failover}}
    option httpchk GET /api/version
    retries {{.Retries}}
    option redispatch 1
    retry-on all-retryable-errors
{{- end}}
{{- range .Nodes}}
    server {{.Name}} {{.Addr}} maxconn {{$.MaxConnsPerNode}}
{{- with $.Failover}} check inter {{ms .HealthInterval}}ms fall 3 rise 2{{end}}
{{- end}}
`

func startHAProxy(e *Env, listen string, fleet *Fleet, opts Options) (*Proc, error) {
	bin, err := findSystemBinary("haproxy")
	if err != nil {
		return nil, err
	}
	path, err := writeConfig(e, ".cfg", haproxyConfig, listen, fleet, opts)
	if err != nil {
		return nil, err
	}
	// -db keeps HAProxy in the foreground, so its PID is the one started.
	return e.Start(ProcSpec{
		Name: opts.Name,
		Path: bin,
		Args: []string{"-db", "-f", path},
	})
}
