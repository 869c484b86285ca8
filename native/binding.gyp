{
  "variables": {
    # 1 when the rdma-core headers are installed (Debian: libibverbs-dev, librdmacm-dev);
    # SOCKGATE_NO_RDMA=1 forces 0 (to test the build without them).
    "sockgate_rdma%": "<!(sh -c 'test -z \"$SOCKGATE_NO_RDMA\" && test -f /usr/include/infiniband/verbs.h && test -f /usr/include/rdma/rdma_cma.h && echo 1 || echo 0')"
  },
  # Both targets build the same sources; they differ only in the test hooks.
  "target_defaults": {
    "sources": ["src/addon.cc", "src/pump_wrap.cc", "src/pump_loop.cc", "src/pump_cmds.cc", "src/pump_link.cc", "src/pump_attach.cc", "src/wrap_eventfd.cc", "src/wrap_region.cc", "src/wrap_splice.cc", "src/wrap_listener.cc",
                "src/js_attach.cc", "src/js_fd.cc", "src/region.cc", "src/pump.cc", "src/attach.cc", "src/splice.cc", "src/vsock.cc", "src/wrap_transparent.cc",
                "src/smc.cc", "src/smc_netlink.cc"],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE"],
    "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-O2", "-pthread"],
    "ldflags": ["-pthread"],
    "cflags_cc!": ["-fno-exceptions"],
    "conditions": [
      ["sockgate_rdma==1", {
        "sources": ["src/rdma.cc", "src/rdma_loopback.cc", "src/rdma_lifecycle.cc", "src/rdma_async_monitor.cc", "src/rdma_conn.cc", "src/rdma_conn_send.cc",
                    "src/rdma_conn_recv.cc", "src/rdma_conn_keepalive.cc", "src/rdma_listener.cc", "src/rdma_addon.cc", "src/rdma_wraps.cc"],
        "defines": ["SG_WITH_RDMA=1"],
        "libraries": ["-libverbs", "-lrdmacm"]
      }]
    ]
  },
  "targets": [
    # The product addon: no test hooks, nothing of them on its hot paths.
    { "target_name": "sockgate_native" },
    # The tests' addon (SOCKGATE_NATIVE_BUILD=test, native/index.ts): the same
    # plus the hooks of hostile-peer tests (Region.unsafePoke64, rdma `hostile`).
    { "target_name": "sockgate_native_test", "defines": ["SOCKGATE_TEST_HOOKS=1"] }
  ]
}
