package config

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

func (v *validator) nodes(nodes []Node) {
	if len(nodes) == 0 {
		v.add("nodes", "no nodes, list at least one under nodes or set %s", EnvNodes)
		return
	}
	names := map[string]int{}
	urls := map[string]int{}
	for i, n := range nodes {
		path := fmt.Sprintf("nodes[%d]", i)
		v.nodeName(path+".name", n.Name, names, i)
		if u, msg := parseNodeURL(n.URL); msg != "" {
			v.add(path+".url", "%s", msg)
		} else {
			key := canonicalHost(u)
			if first, dup := urls[key]; dup {
				v.add(path+".url", "duplicate URL %s, same node as nodes[%d]", n.URL, first)
			} else {
				urls[key] = i
			}
		}
		atLeast(v, path+".max_concurrent", n.MaxConcurrent, 1)
		positive(v, path+".weight", n.Weight)
	}
}

// nodeName checks that the name of node i is set, usable in a URL path and
// a metric label, and unique.
func (v *validator) nodeName(path, name string, names map[string]int, i int) {
	switch {
	case name == "":
		// The URL is invalid, so no name could be derived. The URL's own
		// problem explains why.
		return
	case strings.ContainsFunc(name, invalidNameRune):
		v.add(path, "invalid name %q: must not contain '/', spaces or control characters, "+
			"since it appears in admin routes", name)
		return
	}
	if first, dup := names[name]; dup {
		v.add(path, "duplicate name %q, also nodes[%d]", name, first)
		return
	}
	names[name] = i
}

func invalidNameRune(r rune) bool {
	return r == '/' || r <= ' ' || r == 0x7f
}

// parseNodeURL parses and checks a node URL. It returns the URL, or a
// message saying what is wrong with it.
func parseNodeURL(raw string) (*url.URL, string) {
	if raw == "" {
		return nil, "missing, want a URL such as http://127.0.0.1:11434"
	}
	if !strings.Contains(raw, "://") {
		return nil, "missing scheme, want http:// or https://"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Sprintf("invalid URL: %v", err)
	}
	if msg := nodeURLProblem(u); msg != "" {
		return nil, msg
	}
	return u, ""
}

// nodeURLProblem checks the parts of a parsed node URL.
func nodeURLProblem(u *url.URL) string {
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Sprintf("unsupported scheme %q, want http:// or https://", u.Scheme)
	case u.Hostname() == "":
		return "missing host, want a URL such as http://127.0.0.1:11434"
	case u.User != nil:
		return "must not contain a user name or password"
	case u.Path != "" && u.Path != "/":
		return fmt.Sprintf("must not have a path, got %q, because the proxy adds the /api/... "+
			"paths of each request itself", u.Path)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "must not have a query or fragment"
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Sprintf("invalid port %q, want a number from 1 to 65535", port)
		}
	}
	return ""
}

// canonicalHost returns a key that is equal for two URLs of the same
// server: scheme, lower-case host and explicit port.
func canonicalHost(u *url.URL) string {
	return u.Scheme + "://" + strings.ToLower(hostPort(u))
}

func (v *validator) cors(c CORS) {
	for i, origin := range c.AllowedOrigins {
		if origin == "*" {
			continue
		}
		if msg := originProblem(origin); msg != "" {
			v.add(fmt.Sprintf("cors.allowed_origins[%d]", i), "%s", msg)
		}
	}
}

// originProblem checks a browser origin, which browsers send as
// scheme://host[:port] with no path, not even "/".
func originProblem(origin string) string {
	u, err := url.Parse(origin)
	if err != nil || !strings.Contains(origin, "://") || u.Host == "" {
		return fmt.Sprintf("invalid origin %q: want scheme://host[:port], "+
			"such as https://chat.example.com, or *", origin)
	}
	if u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil {
		return fmt.Sprintf("invalid origin %q: want only scheme://host[:port], "+
			"without a path or trailing slash", origin)
	}
	return ""
}
