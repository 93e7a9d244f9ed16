// Package app connects the parts of llmproxy: configuration, nodes, health
// checks, the proxy server and its listeners. cmd/llmproxy runs one App,
// and tests start as many as they need in one process.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/cache"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/health"
	"github.com/llmproxy/llmproxy/metrics"
	"github.com/llmproxy/llmproxy/proxy"
	"github.com/llmproxy/llmproxy/ratelimit"
)

// Version is the llmproxy release, set at build time with
// -ldflags "-X github.com/llmproxy/llmproxy/app.Version=...".
var Version = "0.1.0-dev"

// App is one running proxy.
type App struct {
	log     *slog.Logger
	metrics *metrics.Metrics
	bal     *balancer.Balancer
	checker *health.Checker
	server  *proxy.Server
	// limiter lives as long as the App. Reload reconfigures it, so that
	// the limit state of every key and client address carries over.
	limiter *ratelimit.Limiter
	cache   *cache.Cache
	redis   *redis.Client
	ln      net.Listener
	// adminLn and adminSrv serve admin.listen when it is set.
	adminLn  net.Listener
	adminSrv *fasthttp.Server

	// mu guards cfg, nodes and limiter.
	mu    sync.Mutex
	cfg   *config.Config
	nodes map[string]*balancer.Node

	cancel context.CancelFunc
	wg     sync.WaitGroup
	// serveErr is the error that ended Serve, read after wg.Wait.
	serveErr error
}

// Start builds the proxy for cfg, probes every node once and starts serving
// on cfg.Listen, and on admin.listen when it is set. A port of 0 picks a
// free port, which Addr returns.
func Start(ctx context.Context, cfg *config.Config, log *slog.Logger) (*App, error) {
	if log == nil {
		log = slog.Default()
	}
	a := &App{
		log:     log,
		metrics: metrics.New(),
		cfg:     cfg,
		nodes:   map[string]*balancer.Node{},
	}

	nodes, err := a.buildNodes(cfg)
	if err != nil {
		return nil, err
	}
	a.bal = balancer.New(balancer.SettingsFrom(cfg), nodes, a.metrics)
	a.checker = health.New(cfg, a.bal, a.metrics, log)
	a.limiter, err = a.newLimiter(cfg)
	if err != nil {
		return nil, err
	}
	if err := a.startCache(cfg); err != nil {
		return nil, err
	}

	a.server = proxy.New(proxy.Options{
		Limiter:      a.limiter,
		Cache:        a.cache,
		Config:       cfg,
		Balancer:     a.bal,
		Metrics:      a.metrics,
		Inventory:    a.checker,
		Health:       a.checker,
		BreakerState: a.checker.BreakerState,
		Logger:       log,
		Version:      Version,
	})
	if a.cache != nil {
		a.checker.OnModelChange(a.server.PurgeModel)
	}

	a.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if err := a.listenAdmin(cfg); err != nil {
		a.ln.Close()
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.checker.ProbeAll(ctx)
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		a.checker.Run(runCtx)
	}()
	go func() {
		defer a.wg.Done()
		a.serveErr = a.server.Serve(a.ln)
	}()
	if a.adminLn != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			_ = a.adminSrv.Serve(a.adminLn)
		}()
	}

	log.Info("llmproxy started", "listen", a.ln.Addr().String(), "nodes", len(nodes),
		"policy", cfg.Balancer.Policy, "version", Version)
	a.logWarnings(cfg)
	return a, nil
}

// logWarnings logs each risky setting of cfg that config.Warnings lists.
func (a *App) logWarnings(cfg *config.Config) {
	for _, w := range cfg.Warnings() {
		a.log.Warn("risky configuration", "warning", w)
	}
}

// buildNodes returns the balancer nodes for cfg, reusing the nodes of the
// running configuration whose URL and limits did not change, so that
// their in-flight counts and inventories carry over a reload.
func (a *App) buildNodes(cfg *config.Config) ([]*balancer.Node, error) {
	out := make([]*balancer.Node, 0, len(cfg.Nodes))
	next := map[string]*balancer.Node{}
	for _, nc := range cfg.Nodes {
		u, err := url.Parse(nc.URL)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", nc.Name, err)
		}
		// A node at the same URL is the same server: it keeps its
		// requests in flight, its drain and its health, and takes the new
		// limits in place.
		n := a.nodes[nc.Name]
		if n == nil || n.URL.String() != u.String() {
			n = balancer.NewNode(nc.Name, u, nc.MaxConcurrent, nc.Weight)
		} else {
			n.SetLimits(nc.MaxConcurrent, nc.Weight)
		}
		next[nc.Name] = n
		out = append(out, n)
	}
	a.nodes = next
	return out, nil
}

// Addr returns the address the proxy listens on.
func (a *App) Addr() string { return a.ln.Addr().String() }

// URL returns the proxy's base URL, http://host:port.
func (a *App) URL() string { return "http://" + a.Addr() }

// Balancer returns the balancer, which owns the node set, for tests and
// the admin page.
func (a *App) Balancer() *balancer.Balancer { return a.bal }

// Metrics returns the metrics registry.
func (a *App) Metrics() *metrics.Metrics { return a.metrics }

// Config returns the configuration in force.
func (a *App) Config() *config.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// Reload applies cfg without dropping requests in flight. Nodes are added,
// removed or changed, and new limits apply to new requests. The usage,
// quota and rate limit state of each key that keeps its name, and of each
// client address, carries over (see ratelimit.Limiter.Reconfigure). The
// settings bound at start (config.Change.Restart: the listeners,
// max_header_bytes, and the redis, cache and log sections) keep their
// running values. Each reload whose cfg differs from them logs a warning
// that names them, until a restart applies them. Like Start, Reload then
// logs the risky settings of the configuration in force.
func (a *App) Reload(ctx context.Context, cfg *config.Config) error {
	a.mu.Lock()

	change := config.Diff(a.cfg, cfg)
	// Keeping them means that Config returns the settings in force. The
	// limiter keeps the Redis server of the start, which the cache also
	// uses.
	cfg = config.KeepRestartSettings(a.cfg, cfg)
	if change.Changed("auth") || change.Changed("rate_limit") {
		if err := a.limiter.Reconfigure(cfg.Auth, cfg.RateLimit); err != nil {
			a.mu.Unlock()
			return fmt.Errorf("rate limits: %w", err)
		}
	}

	nodes, err := a.buildNodes(cfg)
	if err != nil {
		a.mu.Unlock()
		return err
	}
	a.cfg = cfg
	a.mu.Unlock()

	a.bal.SetSettings(balancer.SettingsFrom(cfg))
	a.bal.SetNodes(nodes)
	a.server.SetConfig(cfg)
	a.checker.Sync(cfg)
	a.checker.ProbeAll(ctx)

	a.log.Info("configuration reloaded", "nodes", len(nodes), "added", len(change.Added),
		"removed", len(change.Removed), "updated", len(change.Updated),
		"settings", change.Settings)
	if change.NeedsRestart() {
		a.log.Warn("some changes take effect only after a restart", "settings", change.Restart)
	}
	a.logWarnings(cfg)
	return nil
}

// Shutdown stops accepting connections and lets requests in flight finish
// until ctx ends. It then stops the health checks and closes the limiter,
// the cache and the Redis client.
func (a *App) Shutdown(ctx context.Context) error {
	err := a.server.Shutdown(ctx)
	if a.adminSrv != nil {
		err = errors.Join(err, a.adminSrv.ShutdownWithContext(ctx))
	}
	// fasthttp closes only the listeners its Serve has registered, so a
	// shutdown that comes before Serve got going would leave it accepting.
	_ = a.ln.Close()
	if a.adminLn != nil {
		_ = a.adminLn.Close()
	}
	a.cancel()
	a.wg.Wait()
	a.mu.Lock()
	if a.limiter != nil {
		_ = a.limiter.Close()
		a.limiter = nil
	}
	a.mu.Unlock()
	if a.cache != nil {
		a.cache.Close()
	}
	if a.redis != nil {
		_ = a.redis.Close()
	}
	if a.serveErr != nil && !errors.Is(a.serveErr, net.ErrClosed) {
		err = errors.Join(err, a.serveErr)
	}
	a.log.Info("llmproxy stopped")
	return err
}

// newLimiter builds the API key checks and rate limits of cfg. It contacts
// no Redis server, so it succeeds while Redis is down.
func (a *App) newLimiter(cfg *config.Config) (*ratelimit.Limiter, error) {
	lim, err := ratelimit.New(ratelimit.Options{
		Auth:      cfg.Auth,
		RateLimit: cfg.RateLimit,
		Redis:     cfg.Redis,
		Metrics:   a.metrics,
		Logger:    a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("rate limits: %w", err)
	}
	return lim, nil
}

// startCache builds the response cache of cfg. The cache is in process,
// and also in Redis when redis.addr is set and cache.l2 is enabled. The
// proxy keeps this cache until it stops, so Reload treats every cache and
// redis setting as bound at start.
func (a *App) startCache(cfg *config.Config) error {
	if !cfg.Cache.IsEnabled() {
		return nil
	}
	if cfg.Redis.Addr != "" && cfg.Cache.L2.IsEnabled() {
		a.redis = redis.NewClient(&redis.Options{
			Addr:         cfg.Redis.Addr,
			Password:     cfg.Redis.Password,
			DB:           cfg.Redis.DB,
			DialTimeout:  cfg.Redis.Timeout,
			ReadTimeout:  cfg.Redis.Timeout,
			WriteTimeout: cfg.Redis.Timeout,
			MaxRetries:   -1,
			// One dial per call, so a stopped Redis fails within Timeout.
			DialerRetries: 1,
		})
	}
	c, err := cache.New(cfg.Cache, a.redis, cfg.Redis, a.metrics, a.log)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	a.cache = c
	return nil
}

// listenAdmin opens admin.listen when it is set.
func (a *App) listenAdmin(cfg *config.Config) error {
	if cfg.Admin.Listen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("listen on admin.listen %s: %w", cfg.Admin.Listen, err)
	}
	a.adminLn = ln
	a.adminSrv = &fasthttp.Server{
		Handler:               a.server.AdminHandler(),
		NoDefaultServerHeader: true,
		// Admin requests have small JSON bodies, and fasthttp allocates a
		// body's declared length before it arrives.
		MaxRequestBodySize: 1 << 20,
		ReadTimeout:        30 * time.Second,
		IdleTimeout:        2 * time.Minute,
		CloseOnShutdown:    true,
		// A write timeout of write_timeout reaches the log, as on listen.
		LogAllErrors: true,
		Logger:       a.server.HTTPLogger(),
	}
	a.log.Info("admin routes listening", "listen", ln.Addr().String())
	return nil
}

// AdminAddr returns the address of admin.listen, "" when it is not set.
func (a *App) AdminAddr() string {
	if a.adminLn == nil {
		return ""
	}
	return a.adminLn.Addr().String()
}
