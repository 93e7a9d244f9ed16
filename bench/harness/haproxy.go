package harness

// haproxyConfig balances by least connections and keeps connections to the
// nodes open and shared between requests (http-reuse safe, the default
// keep-alive mode rather than http-server-close). option http-no-delay
// sends each chunk at once: without it HAProxy lets the kernel hold small
// writes to merge them, which delays streamed tokens by up to about 200 ms.
const haproxyConfig = `global
    maxconn 8000

defaults
    mode http
    option http-no-delay
    timeout connect 3s
    timeout client {{.TimeoutSec}}s
    timeout server {{.TimeoutSec}}s
    timeout http-keep-alive 60s
    timeout http-request 10s

frontend bench
    bind {{.Listen}}
    maxconn 8000
    default_backend nodes

backend nodes
    balance leastconn
    http-reuse safe
{{- range .Nodes}}
    server {{.Name}} {{.Addr}} maxconn {{$.MaxConnsPerNode}}
{{- end}}
`

func startHAProxy(e *Env, listen string, fleet *Fleet) (*Proc, error) {
	bin, err := findSystemBinary("haproxy")
	if err != nil {
		return nil, err
	}
	path, err := writeConfig(e, "haproxy.cfg", haproxyConfig, listen, fleet)
	if err != nil {
		return nil, err
	}
	// -db keeps HAProxy in the foreground, so its PID is the one started.
	return e.Start(ProcSpec{
		Name: "haproxy",
		Path: bin,
		Args: []string{"-db", "-f", path},
	})
}
