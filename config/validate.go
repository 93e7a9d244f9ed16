package config

import (
	"cmp"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/llmproxy/llmproxy/internal/wire"
)

// validator collects the problems of a completed Config, locating each by
// the lines and variables recorded while loading.
type validator struct {
	lines    map[string]int
	envs     map[string]string
	problems []Problem
}

// validate checks every section of c.
func (v *validator) validate(c *Config) {
	v.address("listen", c.Listen)
	nonNegative(v, "shutdown_timeout", c.ShutdownTimeout)
	positive(v, "max_body_bytes", c.MaxBodyBytes)
	positive(v, "read_timeout", c.ReadTimeout)
	positive(v, "write_timeout", c.WriteTimeout)
	if c.MaxHeaderBytes < 4<<10 || c.MaxHeaderBytes > 1<<20 {
		v.add("max_header_bytes", "must be between 4KiB and 1MiB, got %d", c.MaxHeaderBytes)
	}

	v.nodes(c.Nodes)
	v.upstream(c.Upstream)
	positive(v, "discovery.interval", c.Discovery.Interval)
	v.cors(c.CORS)
	v.health(c.Health)
	v.breaker(c.Breaker)
	v.retry(c.Retry)
	v.models(c.Models)
	v.oneOf("balancer.policy", c.Balancer.Policy, Policies)
	atLeast(v, "balancer.affinity_load_factor", c.Balancer.AffinityLoadFactor, 1)
	v.queue(c.Queue)
	v.oneOf("auth.unknown_keys", c.Auth.UnknownKeys,
		[]string{UnknownKeysAnonymous, UnknownKeysReject})
	v.keys(c.Auth.Keys)
	v.rateLimit(c.RateLimit)
	v.redis(c.Redis)
	v.cache(c.Cache)
	v.oneOf("log.format", c.Log.Format, []string{LogFormatText, LogFormatJSON})
	v.oneOf("log.level", c.Log.Level,
		[]string{LogLevelDebug, LogLevelInfo, LogLevelWarn, LogLevelError})
	v.admin(c.Admin, c.Listen)
}

// add records a problem at path, located at the line or variable that set
// path or, failing that, the closest enclosing path.
func (v *validator) add(path, format string, args ...any) {
	p := Problem{Path: path, Message: fmt.Sprintf(format, args...)}
	p.Line, p.Env = v.locate(path)
	v.problems = append(v.problems, p)
}

func (v *validator) locate(path string) (line int, env string) {
	for p := path; ; p = parentPath(p) {
		if env, ok := v.envs[p]; ok {
			return 0, env
		}
		if line, ok := v.lines[p]; ok {
			return line, ""
		}
		if p == "" {
			return 0, ""
		}
	}
}

// parentPath strips the last key or index from path: nodes[1].url becomes
// nodes[1], which becomes nodes, which becomes "".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// number is the set of types that the range checks below accept.
type number interface {
	~int | ~int64 | ~uint32 | ~float64
}

func positive[T number](v *validator, path string, got T) {
	if got <= 0 {
		v.add(path, "must be positive, got %v", got)
	}
}

func nonNegative[T number](v *validator, path string, got T) {
	if got < 0 {
		v.add(path, "must not be negative, got %v", got)
	}
}

func atLeast[T cmp.Ordered](v *validator, path string, got, least T) {
	if got < least {
		v.add(path, "must be at least %v, got %v", least, got)
	}
}

// oneOf checks that value is one of allowed.
func (v *validator) oneOf(path, value string, allowed []string) {
	for _, a := range allowed {
		if value == a {
			return
		}
	}
	v.add(path, "unknown value %q%s, want %s", value, didYouMean(value, allowed), orList(allowed))
}

// orList formats items as "a, b or c".
func orList(items []string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}

// address checks a host:port to listen on or dial. The host may be empty,
// which means every interface to a listener, and port 0 picks a free port.
func (v *validator) address(path, addr string) {
	if msg := addressProblem(addr); msg != "" {
		v.add(path, "%s", msg)
	}
}

func addressProblem(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("invalid address %q: want host:port such as 127.0.0.1:11434", addr)
	}
	if strings.ContainsAny(host, " \t/") {
		return fmt.Sprintf("invalid host %q in address %q", host, addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Sprintf("invalid port %q in address %q: want a number from 0 to 65535",
			port, addr)
	}
	return ""
}

func (v *validator) upstream(u Upstream) {
	positive(v, "upstream.connect", u.Connect)
	positive(v, "upstream.first_byte", u.FirstByte)
	positive(v, "upstream.idle", u.Idle)
	nonNegative(v, "upstream.total", u.Total)
}

func (v *validator) health(h Health) {
	positive(v, "health.interval", h.Interval)
	positive(v, "health.timeout", h.Timeout)
	atLeast(v, "health.unhealthy_threshold", h.UnhealthyThreshold, 1)
	atLeast(v, "health.healthy_threshold", h.HealthyThreshold, 1)
	nonNegative(v, "health.max_fails", h.MaxFails)
	if h.MaxFails > 0 {
		positive(v, "health.fail_timeout", h.FailTimeout)
	} else {
		nonNegative(v, "health.fail_timeout", h.FailTimeout)
	}
	if h.MaxEjectionPercent < 0 || h.MaxEjectionPercent > 100 {
		v.add("health.max_ejection_percent", "must be from 0 to 100, got %d", h.MaxEjectionPercent)
	}
}

func (v *validator) breaker(b Breaker) {
	atLeast(v, "breaker.consecutive_failures", b.ConsecutiveFailures, 1)
	if b.FailureRatio <= 0 || b.FailureRatio > 1 {
		v.add("breaker.failure_ratio", "must be above 0 and at most 1, got %v", b.FailureRatio)
	}
	atLeast(v, "breaker.min_requests", b.MinRequests, 1)
	positive(v, "breaker.interval", b.Interval)
	positive(v, "breaker.open_timeout", b.OpenTimeout)
	atLeast(v, "breaker.half_open_requests", b.HalfOpenRequests, 1)
}

func (v *validator) retry(r Retry) {
	atLeast(v, "retry.attempts", r.Attempts, 1)
	nonNegative(v, "retry.backoff", r.Backoff)
	if r.MaxBackoff < r.Backoff {
		v.add("retry.max_backoff", "must be at least retry.backoff (%v), got %v",
			r.Backoff, r.MaxBackoff)
	}
}

func (v *validator) models(m Models) {
	seen := map[string]int{}
	for i, name := range m.Ensure {
		path := fmt.Sprintf("models.ensure[%d]", i)
		if msg := modelNameProblem(name); msg != "" {
			v.add(path, "%s", msg)
			continue
		}
		full := wire.ModelKey(name)
		if first, dup := seen[full]; dup {
			v.add(path, "duplicate model %q, also models.ensure[%d]", name, first)
			continue
		}
		seen[full] = i
	}
}

// modelNameProblem checks that name can be a model name.
func modelNameProblem(name string) string {
	if strings.TrimSpace(name) == "" {
		return "missing model name"
	}
	if strings.ContainsAny(name, " \t\r\n") {
		return fmt.Sprintf("invalid model name %q: must not contain spaces", name)
	}
	return ""
}

func (v *validator) queue(q Queue) {
	nonNegative(v, "queue.aging", q.Aging)
	for name, class := range q.Classes {
		path := "queue.classes." + name
		if ClassRank(name) < 0 {
			v.add(path, "unknown class%s, want %s", didYouMean(name, Classes), orList(Classes))
			continue
		}
		nonNegative(v, path+".max_length", class.MaxLength)
		positive(v, path+".max_wait", class.MaxWait)
	}
	for _, name := range Classes {
		if _, ok := q.Classes[name]; !ok {
			v.add("queue.classes", "missing class %s", name)
		}
	}
}

func (v *validator) rateLimit(r RateLimit) {
	v.rate("rate_limit.per_address", "rate_limit.burst", r.PerAddress, r.Burst)
	for i, s := range r.TrustedProxies {
		if _, err := parsePrefix(s); err != nil {
			v.add(fmt.Sprintf("rate_limit.trusted_proxies[%d]", i), "%v", err)
		}
	}
	atLeast(v, "rate_limit.default_token_estimate", r.DefaultTokenEstimate, 1)
}

// rate checks a token bucket: a rate of 0 means no limit, and any other
// rate needs a burst of at least 1, or no request would ever pass.
func (v *validator) rate(ratePath, burstPath string, rate float64, burst int) {
	nonNegative(v, ratePath, rate)
	nonNegative(v, burstPath, burst)
	if rate > 0 && burst == 0 {
		v.add(burstPath, "must be at least 1 when %s is set, since with 0 no request passes",
			ratePath[strings.LastIndex(ratePath, ".")+1:])
	}
}

func (v *validator) redis(r Redis) {
	if r.Addr != "" {
		v.address("redis.addr", r.Addr)
	}
	nonNegative(v, "redis.db", r.DB)
	positive(v, "redis.timeout", r.Timeout)
	positive(v, "redis.check_interval", r.CheckInterval)
}

func (v *validator) cache(c Cache) {
	v.oneOf("cache.generate", c.Generate, []string{GenerateDeterministic, GenerateNever})
	positive(v, "cache.l1.max_bytes", c.L1.MaxBytes)
	positive(v, "cache.l1.ttl", c.L1.TTL)
	positive(v, "cache.l2.ttl", c.L2.TTL)
}

func (v *validator) admin(a Admin, listen string) {
	if a.Listen == "" {
		return
	}
	v.address("admin.listen", a.Listen)
	if a.Listen == listen && !strings.HasSuffix(listen, ":0") {
		v.add("admin.listen", "must differ from listen (%s), or be empty to serve admin "+
			"routes on the main listener", listen)
	}
}
