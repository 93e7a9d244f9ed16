package statuspage

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that the fake proxies and the cache stats reader leave
// no goroutine behind. Two fasthttp goroutines are exempt: the server date
// updater runs for the whole process once any server starts, and a worker
// pool's idle cleaner exits at its next tick after Shutdown, up to 10s later.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}
