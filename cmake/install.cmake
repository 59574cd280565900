# Installing iceblk (`cmake --install`, and the Debian packages that CPack builds
# from the same rules; scripts/package.sh). Two components:
#   daemon: iceblkd (sbin), iceblk (bin), man pages, systemd units, docs  -> package iceblk
#   dev:    the driver library (one static archive), include/iceblk/, a CMake package
#           config (find_package(iceblk) -> iceblk::driver) and iceblk.pc -> libiceblk-dev
# Paths inside installed files (the units' ExecStart=, the config's library path)
# are taken at install time or relative to the file, so an install into any
# --prefix (the install test uses a temporary one) is self-consistent.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# --- the programs ----------------------------------------------------------------
install(TARGETS iceblkd RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR} COMPONENT daemon)
install(TARGETS iceblk RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT daemon)

# --- the driver library: iceblk_driver and every project library it links, merged --
# The libraries are static; a consumer gets one archive, libiceblk_driver.a, and
# links only external libraries (OpenSSL, fmt, spdlog, ...) besides it.
set(_iceblk_internal "")
set(_iceblk_external "")
function(_iceblk_walk target)
  get_target_property(_type ${target} TYPE)
  get_target_property(_imported ${target} IMPORTED)
  if(_imported)
    if(NOT target IN_LIST _iceblk_external)
      list(APPEND _iceblk_external ${target})
      set(_iceblk_external "${_iceblk_external}" PARENT_SCOPE)
    endif()
    return()
  endif()
  if(target IN_LIST _iceblk_internal)
    return()
  endif()
  if(_type STREQUAL "STATIC_LIBRARY")
    list(APPEND _iceblk_internal ${target})
  endif()
  get_target_property(_deps ${target} INTERFACE_LINK_LIBRARIES)
  if(_type STREQUAL "STATIC_LIBRARY")
    get_target_property(_link ${target} LINK_LIBRARIES)
    if(_link)
      list(APPEND _deps ${_link})
    endif()
  endif()
  foreach(d IN LISTS _deps)
    string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" d "${d}")
    if(NOT d OR d MATCHES "^\\$<")
      continue()
    endif()
    if(TARGET ${d})
      _iceblk_walk(${d})
    elseif(NOT d IN_LIST _iceblk_external)
      list(APPEND _iceblk_external ${d})
    endif()
  endforeach()
  set(_iceblk_internal "${_iceblk_internal}" PARENT_SCOPE)
  set(_iceblk_external "${_iceblk_external}" PARENT_SCOPE)
endfunction()
_iceblk_walk(iceblk_driver)

# What a consumer needs for each external library: find_dependency() arguments,
# pkg-config module, extra link flags. Header-only ones need nothing at link time.
set(_cfg_deps "")
set(_pc_requires "")
set(_pc_libs "")
set(_cfg_targets "")
foreach(ext IN LISTS _iceblk_external)
  if(ext MATCHES "^OpenSSL::(Crypto|SSL)$")
    string(APPEND _cfg_deps "find_dependency(OpenSSL 3)\n")
    if(ext STREQUAL "OpenSSL::SSL")
      list(APPEND _pc_requires libssl)
    else()
      list(APPEND _pc_requires libcrypto)
    endif()
  elseif(ext STREQUAL "fmt::fmt")
    string(APPEND _cfg_deps "find_dependency(fmt)\n")
    list(APPEND _pc_requires fmt)
  elseif(ext STREQUAL "spdlog::spdlog")
    string(APPEND _cfg_deps "find_dependency(spdlog)\n")
    list(APPEND _pc_requires spdlog)
  elseif(ext STREQUAL "tl::expected")
    string(APPEND _cfg_deps "find_dependency(tl-expected)\n")  # header-only, in the default include path
  elseif(ext STREQUAL "Threads::Threads")
    string(APPEND _cfg_deps "find_dependency(Threads)\n")
    list(APPEND _pc_libs -pthread)
  elseif(ext STREQUAL "PkgConfig::URING")
    string(APPEND _cfg_deps "find_dependency(PkgConfig)\npkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)\n")
    list(APPEND _pc_requires liburing)
  elseif(ext STREQUAL "PkgConfig::SYSTEMD")
    string(APPEND _cfg_deps "find_dependency(PkgConfig)\npkg_check_modules(SYSTEMD REQUIRED IMPORTED_TARGET libsystemd)\n")
    list(APPEND _pc_requires libsystemd)
  elseif(ext MATCHES "^(nlohmann_json::nlohmann_json|CLI11::CLI11)$")
    continue()  # header-only, used inside the library only
  else()
    message(FATAL_ERROR "cmake/install.cmake: iceblk_driver links ${ext}; say what a consumer of the installed "
                        "library needs for it (find_dependency, pkg-config module)")
  endif()
  list(APPEND _cfg_targets ${ext})
endforeach()
list(REMOVE_DUPLICATES _pc_requires)
list(REMOVE_DUPLICATES _cfg_targets)
string(REPLACE ";" " " ICEBLK_PC_REQUIRES "${_pc_requires}")
string(REPLACE ";" " " ICEBLK_PC_LIBS "${_pc_libs}")
set(ICEBLK_CFG_DEPENDENCIES "${_cfg_deps}")
set(ICEBLK_CFG_LINK_LIBRARIES "${_cfg_targets}")

set(_archive ${CMAKE_BINARY_DIR}/install/libiceblk_driver.a)
set(_mri "create ${_archive}\n")
foreach(t IN LISTS _iceblk_internal)
  string(APPEND _mri "addlib $<TARGET_FILE:${t}>\n")
endforeach()
string(APPEND _mri "save\nend\n")
file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/install/libiceblk_driver.mri CONTENT "${_mri}")
add_custom_command(OUTPUT ${_archive}
  COMMAND ${CMAKE_COMMAND} -E rm -f ${_archive}
  COMMAND sh -c "'${CMAKE_AR}' -M < '${CMAKE_BINARY_DIR}/install/libiceblk_driver.mri'"
  COMMAND ${CMAKE_RANLIB} ${_archive}
  DEPENDS ${_iceblk_internal} ${CMAKE_BINARY_DIR}/install/libiceblk_driver.mri
  COMMENT "iceblk: merging ${_iceblk_internal} into libiceblk_driver.a"
  VERBATIM)
add_custom_target(iceblk_driver_archive ALL DEPENDS ${_archive})
install(FILES ${_archive} DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
# `cmake --install --strip` and the package (CPACK_STRIP_FILES) drop its debug info.
install(CODE "
  if(CMAKE_INSTALL_DO_STRIP)
    execute_process(COMMAND ${CMAKE_STRIP} --strip-debug
                    \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/libiceblk_driver.a\"
                    COMMAND_ERROR_IS_FATAL ANY)
  endif()" COMPONENT dev)

# --- public headers -------------------------------------------------------------
# include/iceblk/ is self-contained (tests/public_api compiles it with nothing but
# include/ on the path), so the headers install as they are.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/iceblk DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev
        FILES_MATCHING PATTERN "*.h")

# --- find_package(iceblk) and pkg-config ----------------------------------------
set(ICEBLK_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/iceblk)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/iceblkConfig.cmake.in
  ${CMAKE_BINARY_DIR}/install/iceblkConfig.cmake
  INSTALL_DESTINATION ${ICEBLK_CMAKEDIR}
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/install/iceblkConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/install/iceblkConfig.cmake ${CMAKE_BINARY_DIR}/install/iceblkConfigVersion.cmake
        DESTINATION ${ICEBLK_CMAKEDIR} COMPONENT dev)
# iceblk.pc: prefix relative to the file (${pcfiledir}), so it is right wherever
# the tree was installed.
file(RELATIVE_PATH ICEBLK_PC_PREFIX_FROM_PCDIR /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" ICEBLK_PC_PREFIX_FROM_PCDIR "${ICEBLK_PC_PREFIX_FROM_PCDIR}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/iceblk.pc.in ${CMAKE_BINARY_DIR}/install/iceblk.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/install/iceblk.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT dev)

include(${PROJECT_SOURCE_DIR}/cmake/man.cmake)
include(${PROJECT_SOURCE_DIR}/cmake/package.cmake)
