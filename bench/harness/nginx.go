package harness

import (
	"fmt"
	"os"
	"os/exec"
)

// nginxConfig balances by least connections over keep-alive connections to
// the nodes and passes every chunk on as it arrives: proxy_buffering off
// for responses, proxy_request_buffering off for requests. It keeps the
// client's Host header, because a node on loopback rejects a foreign one.
// keepalive_requests is raised from its default of 1000 so that neither
// side closes connections during a phase. With Options.Failover nginx
// passes a request that failed to the next node, POSTs included
// (non_idempotent), and marks a node failed for 10s after one failure
// (max_fails and fail_timeout left at their defaults).
const nginxConfig = `worker_processes auto;
worker_rlimit_nofile 65536;
pid {{.Dir}}/nginx/nginx.pid;
error_log {{.Dir}}/nginx/error.log warn;

events {
    worker_connections 16384;
}

http {
    access_log off;
    client_body_temp_path {{.Dir}}/nginx/body;
    proxy_temp_path {{.Dir}}/nginx/proxy;
    fastcgi_temp_path {{.Dir}}/nginx/fastcgi;
    uwsgi_temp_path {{.Dir}}/nginx/uwsgi;
    scgi_temp_path {{.Dir}}/nginx/scgi;

    upstream nodes {
        least_conn;
{{- range .Nodes}}
        server {{.Addr}} max_conns={{$.MaxConnsPerNode}};
{{- end}}
        keepalive {{.IdleKeepalive}};
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }

    server {
        listen {{.Listen}} backlog=4096;
        keepalive_requests 1000000;
        client_max_body_size 64m;

        location / {
            proxy_pass http://nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_send_timeout {{.TimeoutSec}}s;
{{- with .Failover}}
            proxy_next_upstream error timeout http_500 http_502 http_503 non_idempotent;
            proxy_next_upstream_tries {{.Attempts}};
            proxy_connect_timeout {{ms .Connect}}ms;
            proxy_read_timeout {{ms .FirstByte}}ms;
{{- else}}
            proxy_connect_timeout 3s;
            proxy_read_timeout {{.TimeoutSec}}s;
{{- end}}
        }
    }
}
`

func startNginx(e *Env, listen string, fleet *Fleet, opts Options) (*Proc, error) {
	bin, err := findSystemBinary("nginx")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(e.Path("nginx"), 0o755); err != nil {
		return nil, fmt.Errorf("create nginx prefix: %w", err)
	}
	path, err := writeConfig(e, ".conf", nginxConfig, listen, fleet, opts)
	if err != nil {
		return nil, err
	}
	return e.Start(ProcSpec{
		Name: opts.Name,
		Path: bin,
		Args: []string{"-p", e.Path("nginx"), "-e", "stderr", "-c", path, "-g", "daemon off;"},
	})
}

// findSystemBinary looks name up in PATH and then in /usr/sbin, where
// Debian installs nginx and haproxy.
func findSystemBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := "/usr/sbin/" + name
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found in PATH or /usr/sbin: install it with apt-get install %s",
			name, name)
	}
	return p, nil
}
