! The conformance suite's reference client in Fortran (as clients/c/examples/conformance_client.c):
! every value sum(params) + t + field index; exit 0 after STOP, 2 bad environment, 1 error.
program conformance_client
  use breed_client
  implicit none
  type(breed_t) :: cl
  integer :: rc, t, k, a, n, code
  real(8) :: base
  real(8), allocatable :: buf(:)
  character(len=32) :: flag
  logical :: abort_early
  call get_environment_variable("BREED_CONFORMANCE_ABORT", flag)
  abort_early = len_trim(flag) > 0
  rc = breed_init(cl, 0, 1)
  do while (rc == BREED_OK)
    rc = breed_request(cl)
    if (rc /= BREED_OK) exit
    base = 0
    do a = 1, breed_nparams(cl)
      base = base + breed_param(cl, a)
    end do
    steps: do t = 0, breed_steps(cl)
      do k = 0, breed_nfields(cl) - 1
        n = 1
        do a = 0, breed_field_ndim(cl, k) - 1
          n = n * breed_field_dim(cl, k, a)
        end do
        if (allocated(buf)) deallocate(buf)
        allocate(buf(n))
        buf = base + t + k
        rc = breed_send(cl, t, k, buf, 0, breed_field_dim(cl, k, 0))
        if (rc /= BREED_OK) exit steps
      end do
      if (abort_early) then
        rc = breed_abort(cl, "conformance: abort after step 0")
        rc = -6
        exit steps
      end if
    end do steps
    if (rc == BREED_OK) rc = breed_finish(cl)
  end do
  code = 1
  if (rc == BREED_STOP) code = 0
  if (rc == BREED_ERR_CONFIG) code = 2
  if (code /= 0) then
    if (abort_early .and. rc == -6) then
      write (0, '(a)') "breed_f_client: error: aborted on request (BREED_CONFORMANCE_ABORT)"
    else
      write (0, '(a)') "breed_f_client: error: " // breed_errmsg(cl)
    end if
  end if
  call breed_close(cl, code /= 0)
  call exit(code)
end program
