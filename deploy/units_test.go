package deploy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
)

// unitDirectives returns the values of every key of a unit file's section,
// in file order.
func unitDirectives(t *testing.T, path, section string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	current := ""
	for _, line := range strings.Split(string(readFile(t, path)), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			current = strings.Trim(line, "[]")
		case current == section:
			key, value, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: line %q has no '='", path, line)
			}
			out[key] = append(out[key], value)
		}
	}
	return out
}

func TestUnitsDirectives(t *testing.T) {
	defaults := config.Default()
	for _, unit := range []struct {
		file, config string
	}{
		{"llmproxy.service", "/etc/llmproxy/llmproxy.yaml"},
		{"llmproxy@.service", "/etc/llmproxy/%i.yaml"},
	} {
		t.Run(unit.file, func(t *testing.T) {
			service := unitDirectives(t, unit.file, "Service")
			want := map[string]string{
				"Type":            "notify",
				"ExecReload":      "/bin/kill -HUP $MAINPID",
				"KillSignal":      "SIGTERM",
				"NoNewPrivileges": "yes",
				"ProtectSystem":   "strict",
				"DynamicUser":     "yes",
			}
			for key, value := range want {
				if got := service[key]; len(got) != 1 || got[0] != value {
					t.Errorf("%s = %q, want %q", key, got, value)
				}
			}
			if len(service["LimitNOFILE"]) != 1 {
				t.Errorf("LimitNOFILE = %q, want one value", service["LimitNOFILE"])
			}
			if start := service["ExecStart"]; len(start) != 1 ||
				!strings.HasSuffix(start[0], "serve -config "+unit.config) {
				t.Errorf("ExecStart = %q, want serve -config %s", start, unit.config)
			}

			stop, err := time.ParseDuration(strings.Join(service["TimeoutStopSec"], ""))
			if err != nil || stop <= defaults.ShutdownTimeout || stop > 2*defaults.ShutdownTimeout {
				t.Errorf("TimeoutStopSec = %q, want a little above shutdown_timeout %v",
					service["TimeoutStopSec"], defaults.ShutdownTimeout)
			}
			// Without AF_UNIX the sd_notify datagrams cannot be sent, and
			// systemd would kill the unit when TimeoutStartSec ends.
			if families := strings.Join(service["RestrictAddressFamilies"], " "); !strings.Contains(families, "AF_UNIX") {
				t.Errorf("RestrictAddressFamilies = %q, want AF_UNIX for sd_notify", families)
			}
		})
	}
}

// TestUnitsVerify runs systemd-analyze verify on copies of the units whose
// binary is /bin/true, because it rejects a missing ExecStart binary.
func TestUnitsVerify(t *testing.T) {
	analyze := tool(t, "systemd-analyze", "systemd")
	dir := t.TempDir()
	for _, name := range []string{"llmproxy.service", "llmproxy@.service"} {
		text := strings.ReplaceAll(string(readFile(t, name)), "/usr/local/bin/llmproxy", "/bin/true")
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, unit := range []string{"llmproxy.service", "llmproxy@a.service"} {
		// systemd-analyze exits 0 after warnings such as unknown keys, so
		// any output is a failure.
		if out := run(t, analyze, "verify", "--man=no", filepath.Join(dir, unit)); out != "" {
			t.Errorf("systemd-analyze verify %s:\n%s", unit, out)
		}
	}
}

// nginxDirective returns the arguments of the first directive named key.
func nginxDirective(t *testing.T, text, key string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*` + key + `\s+([^;]+);`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("nginx.conf has no %s directive", key)
	}
	return m[1]
}

// nginxSeconds parses an nginx time such as 660s, 11m or 660.
func nginxSeconds(t *testing.T, value string) time.Duration {
	t.Helper()
	if regexp.MustCompile(`^\d+$`).MatchString(value) {
		value += "s"
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		t.Fatalf("nginx time %q: %v", value, err)
	}
	return d
}

func TestNginxMatchesDefaults(t *testing.T) {
	text := string(readFile(t, "nginx.conf"))
	defaults := config.Default()

	// A request may wait its class's max_wait in the queue, then
	// upstream.first_byte for a cold load, before its first byte.
	firstByte := defaults.Queue.Classes[config.ClassStandard].MaxWait + defaults.Upstream.FirstByte
	if got := nginxSeconds(t, nginxDirective(t, text, "proxy_read_timeout")); got < firstByte {
		t.Errorf("proxy_read_timeout = %v, want at least queue max_wait + first_byte = %v",
			got, firstByte)
	}
	body := nginxDirective(t, text, "client_max_body_size")
	if want := fmt.Sprintf("%dm", defaults.MaxBodyBytes>>20); body != want {
		t.Errorf("client_max_body_size = %s, want %s, the proxy's max_body_bytes", body, want)
	}
	for key, want := range map[string]string{
		"proxy_buffering":    "off",
		"proxy_http_version": "1.1",
	} {
		if got := nginxDirective(t, text, key); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if !regexp.MustCompile(`(?m)^\s*least_conn;`).MatchString(text) {
		t.Error("nginx.conf upstream lacks least_conn")
	}
	if got := nginxDirective(t, text, "proxy_set_header X-Forwarded-For"); got != "$proxy_add_x_forwarded_for" {
		t.Errorf("X-Forwarded-For = %q, want $proxy_add_x_forwarded_for", got)
	}
}

// TestNginxConfigParses runs nginx -t on the example inside a minimal main
// configuration, with a throwaway certificate in place of the real paths.
func TestNginxConfigParses(t *testing.T) {
	nginx := tool(t, "nginx", "nginx")
	dir := t.TempDir()
	certPath, keyPath := writeCertificate(t, dir)
	site := strings.NewReplacer(
		"/etc/ssl/llmproxy/fullchain.pem", certPath,
		"/etc/ssl/llmproxy/privkey.pem", keyPath,
	).Replace(string(readFile(t, "nginx.conf")))
	sitePath := filepath.Join(dir, "site.conf")
	if err := os.WriteFile(sitePath, []byte(site), 0o600); err != nil {
		t.Fatal(err)
	}
	main := strings.NewReplacer("DIR", dir, "SITE", sitePath).Replace(`error_log stderr;
pid DIR/nginx.pid;
events {}
http {
    access_log off;
    client_body_temp_path DIR/client_body;
    proxy_temp_path DIR/proxy;
    fastcgi_temp_path DIR/fastcgi;
    uwsgi_temp_path DIR/uwsgi;
    scgi_temp_path DIR/scgi;
    include SITE;
}
`)
	mainPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(mainPath, []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	out := run(t, nginx, "-t", "-p", dir, "-e", "stderr", "-c", mainPath)
	if strings.Contains(out, "[warn]") || strings.Contains(out, "[emerg]") {
		t.Errorf("nginx -t:\n%s", out)
	}
}

// writeCertificate writes a self-signed certificate and its key for
// llm.example.com into dir and returns their paths.
func writeCertificate(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "llm.example.com"},
		DNSNames:     []string{"llm.example.com"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePEM(t, certPath, "CERTIFICATE", der)
	writePEM(t, keyPath, "PRIVATE KEY", keyDER)
	return certPath, keyPath
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	b := pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
