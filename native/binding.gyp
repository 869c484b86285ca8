{
  "targets": [
    {
      "target_name": "sockgate_native",
      "sources": ["src/addon.cc", "src/region.cc", "src/pump.cc", "src/attach.cc", "src/splice.cc", "src/vsock.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-O2", "-pthread"],
      "ldflags": ["-pthread"],
      "cflags_cc!": ["-fno-exceptions"]
    }
  ]
}
